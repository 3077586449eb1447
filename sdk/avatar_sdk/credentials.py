"""VideoSDK join tokens for Avatar Server workers.

The operator holds the VideoSDK API key and secret; a worker only ever gets a short-lived token
scoped to its room and its participant id. The payload is the one videosdk-agents'
`generate_avatar_credentials` signs (apikey, permissions ["allow_join"], version 2, iat, exp,
participantId), plus `roomId`, which VideoSDK honours to keep the token from joining any other room.

Secrets and tokens never appear in a repr or a log line: the classes here redact them.
"""

from __future__ import annotations

import dataclasses
import math
import secrets
import time
from typing import Any, NamedTuple

import jwt

ALGORITHM = "HS256"
PERMISSIONS = ("allow_join",)
TOKEN_VERSION = 2
MIN_TTL_SECONDS = 60
MAX_TTL_SECONDS = 86_400


class CredentialsError(ValueError):
    """Credentials or a token that cannot be used; the message says why, never the secret."""


@dataclasses.dataclass(frozen=True)
class VideoSDKCredentials:
    """A VideoSDK API key and secret. The repr shows neither in full."""

    api_key: str
    secret: str = dataclasses.field(repr=False)

    def __post_init__(self) -> None:
        if not self.api_key or not self.api_key.strip():
            raise CredentialsError("the VideoSDK API key is empty")
        if not self.secret or not self.secret.strip():
            raise CredentialsError("the VideoSDK secret is empty")

    def __repr__(self) -> str:
        return f"VideoSDKCredentials(api_key={_redact(self.api_key)!r}, secret='***')"


@dataclasses.dataclass(frozen=True)
class JoinToken:
    """A signed token and what it allows. `str()` and the repr never show the token."""

    token: str = dataclasses.field(repr=False)
    room_id: str
    participant_id: str
    expires_at: int  # unix seconds

    def __str__(self) -> str:
        return repr(self)


class TokenClaims(NamedTuple):
    """What a token says about itself (read without checking its signature)."""

    api_key: str | None
    participant_id: str | None
    room_id: str | None
    permissions: tuple[str, ...]
    issued_at: int | None
    not_before: int | None
    expires_at: int | None


def _redact(value: str) -> str:
    return value[:4] + "…" if len(value) > 8 else "***"


def generate_participant_id(prefix: str = "avatar") -> str:
    """A participant id shaped like videosdk-agents' own (`avatar_1a2b3c4d`)."""
    return f"{prefix}_{secrets.token_hex(4)}"


def mint_join_token(
    credentials: VideoSDKCredentials,
    *,
    room_id: str,
    participant_id: str,
    ttl_seconds: int = 3600,
    now: float | None = None,
) -> JoinToken:
    """Sign a token that lets `participant_id` join `room_id` for `ttl_seconds`."""
    if not room_id:
        raise CredentialsError("room_id is empty: a worker token must be scoped to one room")
    if not participant_id:
        raise CredentialsError("participant_id is empty")
    if not MIN_TTL_SECONDS <= ttl_seconds <= MAX_TTL_SECONDS:
        raise CredentialsError(
            f"ttl_seconds must be between {MIN_TTL_SECONDS} and {MAX_TTL_SECONDS}, "
            f"got {ttl_seconds}"
        )
    issued = int(time.time() if now is None else now)
    payload: dict[str, Any] = {
        "apikey": credentials.api_key,
        "permissions": list(PERMISSIONS),
        "version": TOKEN_VERSION,
        "iat": issued,
        "exp": issued + ttl_seconds,
        "participantId": participant_id,
        "roomId": room_id,
    }
    token = jwt.encode(payload, credentials.secret, algorithm=ALGORITHM)
    return JoinToken(token, room_id, participant_id, issued + ttl_seconds)


def _int_claim(claims: dict[str, Any], key: str) -> int | None:
    """A numeric claim as whole seconds; None when absent or not a number. A number that is not
    finite (`NaN`, `Infinity` and `1e400` decode from a JWT's JSON) is refused."""
    value = claims.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if not math.isfinite(value):
        raise CredentialsError(f"the token's {key} claim is not a finite number: {value!r}")
    return int(value)


def _str_claim(claims: dict[str, Any], key: str) -> str | None:
    value = claims.get(key)
    return value if isinstance(value, str) else None


def read_claims(token: str) -> TokenClaims:
    """Read a token's claims without verifying its signature.

    For tokens signed by someone else (an agent's own key): the caller can still check
    expiry and scope, but must not treat the claims as authenticated.
    """
    try:
        claims = jwt.decode(token, options={"verify_signature": False, "verify_exp": False})
    except jwt.PyJWTError as exc:
        raise CredentialsError(f"not a JWT: {exc}") from exc
    permissions = claims.get("permissions")
    return TokenClaims(
        api_key=_str_claim(claims, "apikey"),
        participant_id=_str_claim(claims, "participantId"),
        room_id=_str_claim(claims, "roomId"),
        permissions=tuple(p for p in permissions if isinstance(p, str))
        if isinstance(permissions, list)
        else (),
        issued_at=_int_claim(claims, "iat"),
        not_before=_int_claim(claims, "nbf"),
        expires_at=_int_claim(claims, "exp"),
    )


def verify_join_token(
    token: str, credentials: VideoSDKCredentials, *, leeway_seconds: int = 0
) -> TokenClaims:
    """Check a token's signature and expiry against our own key."""
    try:
        jwt.decode(
            token,
            credentials.secret,
            algorithms=[ALGORITHM],
            leeway=leeway_seconds,
            options={"require": ["exp", "iat"]},
        )
    except jwt.ExpiredSignatureError as exc:
        raise CredentialsError("the token has expired") from exc
    except jwt.PyJWTError as exc:
        raise CredentialsError(f"the token does not verify: {exc}") from exc
    return read_claims(token)


def check_caller_token(
    token: str,
    *,
    room_id: str,
    participant_id: str | None,
    now: float | None = None,
    min_remaining_seconds: int = 30,
    leeway_seconds: int = 30,
) -> TokenClaims:
    """Check a join token someone else signed (an agent's own key), without its signature.

    The operator may not hold the key that signed it, so only what the token says about
    itself is checked: that it is a JWT with an expiry that leaves a worker time to join, that
    it is already valid, that it names `participant_id` (when given), that a `roomId` claim, if
    any, is this room, and that its permissions allow joining. Each refusal says which.
    """
    claims = read_claims(token)
    at = time.time() if now is None else now
    if claims.expires_at is None:
        raise CredentialsError(
            "the token has no exp claim: sign it with an expiry "
            "(videosdk-agents' generate_avatar_credentials does)"
        )
    remaining = claims.expires_at - at
    if remaining <= 0:
        raise CredentialsError(f"the token expired {int(-remaining)} s ago: sign a fresh one")
    if remaining < min_remaining_seconds:
        raise CredentialsError(
            f"the token expires in {int(remaining)} s, too soon for a worker to join "
            f"(at least {min_remaining_seconds} s needed)"
        )
    if claims.not_before is not None and claims.not_before > at + leeway_seconds:
        raise CredentialsError(
            f"the token is not valid for another {int(claims.not_before - at)} s (nbf): "
            "check the signer's clock"
        )
    if claims.participant_id is None:
        raise CredentialsError("the token has no participantId claim: sign it for the avatar")
    if participant_id is not None and claims.participant_id != participant_id:
        raise CredentialsError(
            f"the token is for participant {claims.participant_id!r}, not {participant_id!r}"
        )
    if claims.room_id is not None and claims.room_id != room_id:
        raise CredentialsError(f"the token is for room {claims.room_id!r}, not {room_id!r}")
    if "allow_join" not in claims.permissions:
        raise CredentialsError(
            "the token's permissions do not include allow_join"
            if claims.permissions
            else 'the token has no permissions claim: sign it with "permissions": ["allow_join"]'
        )
    return claims
