"""Who may launch, and how often: the bearer token, the caller's own VideoSDK signature, and
rate limits.

A caller is let in by `Authorization: Bearer <token>`, or HTTP Basic with the token as the
password (what a stock agent sends for `http://avatar:<token>@host:port/launch`), or — where
turned on — by a join token signed with the operator's own VideoSDK key (`OwnKey`). The token
file is re-read when it changes, and a missing one refuses everyone with a reason
(`ConfigError`).
"""

from __future__ import annotations

import base64
import binascii
import hmac
import logging
import os
import time
from collections.abc import Callable

import jwt

from avatar_operator import kube
from avatar_operator import settings as settings_mod
from avatar_sdk import credentials, strictjson

logger = logging.getLogger(__name__)

OWN_KEY_CACHE_SECONDS = 30.0


class RateLimiter:
    """A token bucket per caller: `rate_per_minute` sustained, bursts of up to that many."""

    def __init__(
        self, rate_per_minute: int, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.capacity = float(rate_per_minute)
        self.per_second = rate_per_minute / 60.0
        self.clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}

    def take(self, caller: str) -> float:
        """0 if the request may go ahead, else the seconds until it may."""
        now = self.clock()
        tokens, since = self._buckets.get(caller, (self.capacity, now))
        tokens = min(self.capacity, tokens + (now - since) * self.per_second)
        if tokens < 1:
            self._buckets[caller] = (tokens, now)
            return (1 - tokens) / self.per_second
        self._buckets[caller] = (tokens - 1, now)
        if len(self._buckets) > 10_000:  # forget callers whose bucket has refilled
            rate, cap = self.per_second, self.capacity
            full = [k for k, (t, at) in self._buckets.items() if t + (now - at) * rate >= cap]
            for key in full:
                del self._buckets[key]
        return 0.0


class ConfigError(RuntimeError):
    """The dispatcher cannot run as configured (its token file); the message says why."""


class BearerToken:
    """The token callers present, read from a mounted Secret file and re-read on change."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._stamp: tuple[int, int] | None = None
        self._value = b""
        self.read()  # refuse to start without one

    def read(self) -> bytes:
        try:
            stat = os.stat(self.path)
        except OSError as exc:
            raise ConfigError(
                f"the dispatcher's bearer token file {self.path} cannot be read: {exc.strerror}"
            ) from None
        stamp = (stat.st_mtime_ns, stat.st_size)
        if stamp != self._stamp:
            with open(self.path, "rb") as fh:
                value = fh.read().strip()
            if len(value) < 16:
                raise ConfigError(
                    f"the dispatcher's bearer token in {self.path} is shorter than 16 bytes: "
                    "use a random one (e.g. `openssl rand -hex 32`)"
                )
            self._value, self._stamp = value, stamp
        return self._value

    def matches(self, authorization: str | None) -> bool:
        presented = _presented_token(authorization)
        if presented is None:
            return False
        return hmac.compare_digest(presented, self.read())


def _presented_token(authorization: str | None) -> bytes | None:
    """The token in `Bearer <token>`, or the password of HTTP Basic `user:<token>`."""
    if not authorization:
        return None
    scheme, _, value = authorization.strip().partition(" ")
    value = value.strip()
    if scheme.lower() == "bearer":
        return value.encode()
    if scheme.lower() == "basic":
        try:
            decoded = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            return None
        return decoded.partition(b":")[2]
    return None


class OwnKey:
    """The chart's default VideoSDK credentials, to recognise join tokens signed with them."""

    def __init__(self, kube_: kube.Kube, settings: settings_mod.OperatorSettings) -> None:
        self._kube = kube_
        self._settings = settings
        self._cached: tuple[float, credentials.VideoSDKCredentials | None] | None = None

    async def signed(self, raw: bytes) -> bool:
        """Whether the body's join token carries the signature of the operator's own VideoSDK
        key (and its API key): then its sender holds that account's secret. Expiry and scope
        are `request.parse_launch`'s to check, with its messages."""
        try:
            body = strictjson.loads(raw)
        except strictjson.JSONRefused:
            return False  # `request.parse_launch` says why, if it gets that far
        token = body.get("token") if isinstance(body, dict) else None
        own = await self._credentials()
        if not isinstance(token, str) or own is None:
            return False
        try:
            claims = jwt.decode(
                token,
                own.secret,
                algorithms=[credentials.ALGORITHM],
                options={"verify_exp": False, "verify_nbf": False, "verify_iat": False},
            )
        except jwt.PyJWTError:
            return False
        return hmac.compare_digest(str(claims.get("apikey", "")), own.api_key)

    async def _credentials(self) -> credentials.VideoSDKCredentials | None:
        """Re-read at most every 30 s."""
        now = time.monotonic()
        if self._cached is not None and now - self._cached[0] < OWN_KEY_CACHE_SECONDS:
            return self._cached[1]
        settings = self._settings
        where = (settings.operator_namespace, settings.default_credentials_secret)
        found: credentials.VideoSDKCredentials | None = None
        try:
            data = (await self._kube.read_secret(*where)).get("data") or {}
            found = credentials.VideoSDKCredentials(
                base64.b64decode(data[settings.default_api_key_key]).decode(),
                base64.b64decode(data[settings.default_secret_key]).decode(),
            )
        except (kube.KubeError, KeyError, ValueError, UnicodeDecodeError) as exc:
            logger.warning(
                "cannot check launch tokens against the operator's VideoSDK key",
                extra={"secret": "/".join(where), "error": type(exc).__name__},
            )
        self._cached = (now, found)
        return found
