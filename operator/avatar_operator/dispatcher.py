"""`POST /launch`: the VideoSDK avatar dispatcher's API, served by the operator.

videosdk-agents' `AvatarAudioOut(credentials=…, avatar_dispatcher_url=URL)` POSTs an
`AvatarJoinInfo` — `{"room_name", "token", "participant_id", "signaling_base_url"}` — to a
dispatcher and expects a 2xx once an Avatar Server is on its way into the room. Pointing that
URL here makes the avatar an AvatarSession like any other: placed by VRAM, watched, collected.

A launch:

1. is rate-limited per caller address, then authenticated: `Authorization: Bearer <token>`, or
   HTTP Basic with the token as the password — which is what a stock agent sends for a URL of
   the form `http://avatar:<token>@host:port/launch` (its HTTP client turns the URL's user info
   into Basic auth), so migrating really is a change of URL; or, where turned on, by the join
   token itself when it is signed with the operator's own VideoSDK key (its sender holds that
   account's secret: no secret in the URL at all);
2. reads at most `dispatcher_max_body_bytes` of JSON and checks every field: the room id as the
   CRD would, the token as a JWT with an expiry that leaves time to join, a `participantId`
   that is the request's, and no other room (its signature is not checked: the operator may
   not hold the agent's key — VideoSDK checks it when the worker joins);
3. creates the session for that room and participant — its name is derived from both, so a
   repeated POST finds the same session instead of starting a second avatar — with the
   caller's token in a Secret the session owns (`credentials.tokenSecretRef`), never in the
   spec or status; the session's status says `tokenSource: Caller`;
4. waits (briefly) for the GPU decision: 201 once placed, or 503 with the Unschedulable message
   when no GPU fits (the session is deleted: the caller was told no); with `?wait=joined`, it
   answers only once the worker has joined the room (504 if it does not in time).

Errors are JSON: `{"error": "<code>", "message": "<what to do>"}` with a 4xx/5xx status.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hmac
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jwt
from aiohttp import web

from avatar_operator import kube, manifests, metrics
from avatar_operator import settings as settings_mod
from avatar_sdk import api, credentials

logger = logging.getLogger(__name__)

Obj = dict[str, Any]

LABEL_LAUNCHED_BY = "avatar-operator.dev/launched-by"
LAUNCHED_BY = "dispatcher"
# The request's own fields (videosdk-agents' AvatarJoinInfo) and their longest accepted values.
FIELD_LIMITS = {"room_name": 128, "token": 8_192, "participant_id": 128, "signaling_base_url": 253}
REQUIRED_FIELDS = ("room_name", "token")
# Reading a session back while waiting on the operator: soon at first (placing takes
# milliseconds), then less often (joining takes seconds).
POLL_FIRST_SECONDS = 0.01
POLL_MAX_SECONDS = 0.2
POLL_SECONDS = 0.1  # a session being deleted
OWN_KEY_CACHE_SECONDS = 30.0


class LaunchError(Exception):
    """A refused launch: the HTTP status, a machine-readable code and a human message."""

    def __init__(
        self, status: int, code: str, message: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}

    def response(self) -> web.Response:
        return web.json_response(
            {"error": self.code, "message": self.message}, status=self.status, headers=self.headers
        )


@dataclass(frozen=True)
class LaunchRequest:
    """A checked AvatarJoinInfo. `repr` never shows the token."""

    room_id: str
    participant_id: str
    token: str
    signaling_base_url: str | None
    expires_at: int

    def __repr__(self) -> str:
        return (
            f"LaunchRequest(room_id={self.room_id!r}, participant_id={self.participant_id!r}, "
            f"token='***', signaling_base_url={self.signaling_base_url!r})"
        )


def _bad(field: str, message: str) -> LaunchError:
    return LaunchError(400, "invalid_request", f"{field}: {message}")


def parse_launch(
    raw: bytes, *, now: float | None = None, min_token_seconds: int = 30
) -> LaunchRequest:
    """Check an AvatarJoinInfo body; raises LaunchError naming the field at fault.

    Unknown fields are ignored, so that a newer agent adding one still launches.
    """
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise LaunchError(400, "invalid_json", f"the body is not JSON: {exc}") from None
    if not isinstance(body, dict):
        raise LaunchError(
            400, "invalid_request", f"the body must be a JSON object, not {type(body).__name__}"
        )
    values: dict[str, str | None] = {}
    for field, limit in FIELD_LIMITS.items():
        value = body.get(field)
        if value is None or value == "":
            if field in REQUIRED_FIELDS:
                raise _bad(field, "required")
            values[field] = None
            continue
        if not isinstance(value, str):
            raise _bad(field, f"must be a string, not {type(value).__name__}")
        if len(value) > limit:
            raise _bad(field, f"at most {limit} characters (got {len(value)})")
        values[field] = value.strip()

    room = values["room_name"] or ""
    participant = values["participant_id"]
    base_url = values["signaling_base_url"]
    if base_url is not None:
        # AvatarJoinInfo may carry a URL; the VideoSDK SDK wants the bare host
        for scheme in ("https://", "wss://"):
            base_url = base_url.removeprefix(scheme)
        base_url = base_url.rstrip("/")
    token = values["token"] or ""
    # What the CRD would refuse is refused here, named as the request's field.
    spec: Obj = {"roomId": room}
    if participant is not None:
        spec["participantId"] = participant
    if base_url is not None:
        spec["signalingBaseUrl"] = base_url
    try:
        api.parse_spec(spec)
    except api.SpecError as exc:
        names = {
            "spec.roomId": "room_name",
            "spec.participantId": "participant_id",
            "spec.signalingBaseUrl": "signaling_base_url",
        }
        path, message = exc.problems[0]
        raise _bad(names.get(path, path), message) from None
    if token.count(".") != 2:
        raise _bad("token", "not a JWT (expected three dot-separated parts)")
    try:
        claims = credentials.check_caller_token(
            token,
            room_id=room,
            participant_id=participant,
            now=now,
            min_remaining_seconds=min_token_seconds,
        )
    except credentials.CredentialsError as exc:
        raise LaunchError(422, "token_refused", f"token: {exc}") from None
    assert claims.participant_id is not None and claims.expires_at is not None
    return LaunchRequest(
        room_id=room,
        participant_id=participant or claims.participant_id,
        token=token,
        signaling_base_url=base_url,
        expires_at=claims.expires_at,
    )


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


class Dispatcher:
    """The `/launch` endpoint of one operator replica (every replica serves it)."""

    def __init__(
        self,
        api_: kube.Kube,
        settings: settings_mod.OperatorSettings,
        *,
        metrics_: metrics.Metrics | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.api = api_
        self.settings = settings
        self.namespace = settings.launch_namespace
        self.metrics = metrics_ or metrics.Metrics()
        self.bearer = (
            BearerToken(settings.dispatcher_token_file) if settings.dispatcher_token_file else None
        )
        self._own_key: tuple[float, credentials.VideoSDKCredentials | None] | None = None
        self.limiter = RateLimiter(settings.dispatcher_rate_per_minute, clock=clock)
        self._create_lock = asyncio.Lock()  # the cap is counted and spent one launch at a time

    def routes(self) -> list[web.RouteDef]:
        return [web.post("/launch", self.handle_launch)]

    async def serve(self, host: str = "0.0.0.0") -> web.AppRunner:
        app = web.Application(client_max_size=self.settings.dispatcher_max_body_bytes)
        app.router.add_routes(self.routes())
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, host, self.settings.dispatcher_port).start()
        logger.info(
            "dispatcher listening",
            extra={"port": self.settings.dispatcher_port, "namespace": self.namespace},
        )
        return runner

    async def handle_launch(self, request: web.Request) -> web.Response:
        caller = request.remote or "unknown"
        try:
            try:
                response = await self._launch(request, caller)
            except kube.Forbidden as exc:
                raise LaunchError(
                    503,
                    "forbidden",
                    f"the operator may not do this in namespace {self.namespace}: {exc.message} "
                    "(the chart's dispatcher Role grants it there)",
                ) from None
            except kube.KubeError as exc:
                raise LaunchError(
                    503,
                    "api_error",
                    f"the Kubernetes API refused a step of the launch: {exc}",
                    {"Retry-After": "5"},
                ) from None
            except (OSError, TimeoutError) as exc:
                raise LaunchError(
                    503,
                    "api_unreachable",
                    f"the Kubernetes API did not answer: {type(exc).__name__}",
                    {"Retry-After": "5"},
                ) from None
        except LaunchError as exc:
            if exc.status >= 500 or exc.status in (401, 429):
                logger.warning(
                    "launch refused",
                    extra={"caller": caller, "status": exc.status, "error": exc.code},
                )
            response = exc.response()
        self.metrics.launches.labels(code=str(response.status)).inc()
        return response

    async def _launch(self, request: web.Request, caller: str) -> web.Response:
        wait = request.query.get("wait", "")
        if wait not in ("", "created", "joined"):
            raise _bad("wait", f"use wait=joined or leave it out (got {wait!r})")
        retry = self.limiter.take(caller)
        if retry:
            raise LaunchError(
                429,
                "rate_limited",
                f"more than {self.settings.dispatcher_rate_per_minute} requests a minute from "
                f"{caller}; retry in {retry:.0f} s",
                {"Retry-After": str(max(1, round(retry)))},
            )
        try:
            authorized = self.bearer is not None and self.bearer.matches(
                request.headers.get("Authorization")
            )
        except ConfigError as exc:  # the token file went away: refuse everyone, say why
            logger.error("dispatcher token unreadable", extra={"error": str(exc)})
            raise LaunchError(503, "not_configured", "the dispatcher has no bearer token") from None
        unauthorized = LaunchError(
            401,
            "unauthorized",
            "send the dispatcher's token as `Authorization: Bearer <token>`, or put it in the "
            "URL (http://avatar:<token>@host:port/launch)"
            + (
                ", or sign the join token with the operator's VideoSDK key"
                if self.settings.dispatcher_accept_signed_tokens
                else ""
            ),
            {"WWW-Authenticate": 'Bearer realm="avatar-operator"'},
        )
        if not authorized and not self.settings.dispatcher_accept_signed_tokens:
            raise unauthorized
        raw = await self._read_body(request)
        if not authorized and not await self._signed_by_us(raw):
            raise unauthorized
        launch = parse_launch(raw)
        name = api.session_name_for_room(launch.room_id, launch.participant_id)
        async with self._create_lock:
            session, created = await self._find_or_create(name, launch, caller)
        session = await self._await_placement(session, created)
        if wait == "joined":
            session = await self._await_joined(session, request)
        return self._answer(session, created)

    async def _read_body(self, request: web.Request) -> bytes:
        limit = self.settings.dispatcher_max_body_bytes
        too_big = LaunchError(413, "body_too_large", f"the body must be at most {limit} bytes")
        if request.content_length is not None and request.content_length > limit:
            raise too_big
        raw = await request.content.read(limit + 1)
        if len(raw) > limit:
            raise too_big
        return raw

    async def _signed_by_us(self, raw: bytes) -> bool:
        """Whether the body's join token carries the signature of the operator's own VideoSDK
        key (and its API key): then its sender holds that account's secret. Expiry and scope
        are `parse_launch`'s to check, with its messages."""
        try:
            token = json.loads(raw).get("token")
        except (ValueError, AttributeError):
            return False
        own = await self._own_credentials()
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

    async def _own_credentials(self) -> credentials.VideoSDKCredentials | None:
        """The chart's default VideoSDK credentials, re-read at most every 30 s."""
        now = time.monotonic()
        if self._own_key is not None and now - self._own_key[0] < OWN_KEY_CACHE_SECONDS:
            return self._own_key[1]
        settings = self.settings
        where = (settings.operator_namespace, settings.default_credentials_secret)
        found: credentials.VideoSDKCredentials | None = None
        try:
            data = (await self.api.read_secret(*where)).get("data") or {}
            found = credentials.VideoSDKCredentials(
                base64.b64decode(data[settings.default_api_key_key]).decode(),
                base64.b64decode(data[settings.default_secret_key]).decode(),
            )
        except (kube.KubeError, KeyError, ValueError, UnicodeDecodeError) as exc:
            logger.warning(
                "cannot check launch tokens against the operator's VideoSDK key",
                extra={"secret": "/".join(where), "error": type(exc).__name__},
            )
        self._own_key = (now, found)
        return found

    # --- the session and its token -----------------------------------------------------------

    async def _find_or_create(
        self, name: str, launch: LaunchRequest, caller: str
    ) -> tuple[Obj, bool]:
        try:
            existing: Obj | None = await self.api.get_session(self.namespace, name)
        except kube.NotFound:
            existing = None
        if existing is not None:
            labels = existing["metadata"].get("labels") or {}
            if labels.get(LABEL_LAUNCHED_BY) != LAUNCHED_BY:
                raise LaunchError(
                    409,
                    "conflict",
                    f"AvatarSession {self.namespace}/{name} for this room and participant exists "
                    "and was not created by the dispatcher; delete it or use another "
                    "participant_id",
                )
            phase = api.parse_status(existing.get("status")).phase
            if phase is None or not phase.finished:
                return existing, False  # the same launch again: one avatar per room/participant
            # a finished session waiting out its TTL: this is a new launch for the room
            await self.api.delete_session(self.namespace, name)
            await self._await_gone(name)
        await self._check_cap()
        body = self._session_body(name, launch)
        try:
            session = await self.api.create_session(body)
        except kube.Conflict:  # another replica created it this instant
            return await self.api.get_session(self.namespace, name), False
        except kube.Invalid as exc:
            raise LaunchError(422, "invalid_session", f"the API server refused it: {exc}") from None
        await self._store_token(session, launch.token)
        logger.info(
            "launched",
            extra={
                "session": f"{self.namespace}/{name}",
                "room_id": launch.room_id,
                "participant": launch.participant_id,
                "caller": caller,
            },
        )
        return session, True

    async def _await_gone(self, name: str) -> None:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                await self.api.get_session(self.namespace, name)
            except kube.NotFound:
                return
            await asyncio.sleep(POLL_SECONDS)
        raise LaunchError(
            503,
            "busy",
            f"the room's previous session {self.namespace}/{name} is still being deleted; retry",
            {"Retry-After": "2"},
        )

    async def _check_cap(self) -> None:
        sessions = await self.api.list_sessions(
            self.namespace, label_selector=f"{LABEL_LAUNCHED_BY}={LAUNCHED_BY}"
        )
        live = sum(
            1
            for s in sessions
            if not (s["metadata"].get("deletionTimestamp"))
            and not (api.parse_status(s.get("status")).phase or api.Phase.PENDING).finished
        )
        cap = self.settings.dispatcher_max_sessions
        if live >= cap:
            raise LaunchError(
                429,
                "too_many_sessions",
                f"{live} sessions launched through the dispatcher are live, the cap is {cap} "
                f"({settings_mod.ENV_PREFIX}DISPATCHER_MAX_SESSIONS); retry when one ends",
                {"Retry-After": "30"},
            )

    def _session_body(self, name: str, launch: LaunchRequest) -> Obj:
        spec: Obj = json.loads(json.dumps(self.settings.dispatcher_session_template))
        spec["roomId"] = launch.room_id
        spec["participantId"] = launch.participant_id
        spec["credentials"] = {
            "tokenSecretRef": {"name": manifests.caller_token_secret_name(name), "key": "token"}
        }
        if launch.signaling_base_url:
            spec["signalingBaseUrl"] = launch.signaling_base_url
        try:
            api.parse_spec(spec)  # the template is checked at start; this catches the rest
        except api.SpecError as exc:
            raise LaunchError(422, "invalid_session", str(exc)) from None
        return {
            "apiVersion": api.API_VERSION,
            "kind": api.KIND,
            "metadata": {
                "name": name,
                "namespace": self.namespace,
                "labels": {
                    LABEL_LAUNCHED_BY: LAUNCHED_BY,
                    "app.kubernetes.io/managed-by": manifests.MANAGED_BY,
                },
            },
            "spec": spec,
        }

    async def _store_token(self, session: Obj, token: str) -> None:
        """The caller's token, in a Secret the session owns (deleted with it)."""
        meta = session["metadata"]
        secret: Obj = {
            "apiVersion": "v1",
            "kind": "Secret",
            "type": "Opaque",
            "metadata": {
                "name": manifests.caller_token_secret_name(meta["name"]),
                "namespace": meta["namespace"],
                "labels": manifests.labels(session),
                "ownerReferences": [
                    {
                        "apiVersion": api.API_VERSION,
                        "kind": api.KIND,
                        "name": meta["name"],
                        "uid": meta["uid"],
                        "controller": True,
                        "blockOwnerDeletion": True,
                    }
                ],
            },
            "data": {"token": base64.b64encode(token.encode()).decode()},
        }
        try:
            await self.api.create(secret, answer=False)
        except kube.Conflict:  # left by an earlier session of the same name: take it over
            await self.api.replace(secret)
        except kube.KubeError:
            # without its token the session cannot start: take it back, tell the caller
            with contextlib.suppress(kube.KubeError):
                await self.api.delete_session(meta["namespace"], meta["name"])
            raise

    # --- waiting for the operator ------------------------------------------------------------

    async def _await_placement(self, session: Obj, created: bool) -> Obj:
        """Until the operator has placed the session (or found no GPU for it)."""
        meta = session["metadata"]
        deadline = time.monotonic() + self.settings.dispatcher_placement_wait_seconds
        poll = POLL_FIRST_SECONDS
        while True:
            status = api.parse_status(session.get("status"))
            if status.phase is api.Phase.PENDING and created:
                scheduled = next(
                    (c for c in status.conditions if c.type is api.ConditionType.SCHEDULED), None
                )
                if scheduled is not None and scheduled.reason == "Unschedulable":
                    # the caller is told no: the session must not start behind its back later
                    await self.api.delete_session(meta["namespace"], meta["name"])
                    raise LaunchError(
                        503,
                        "unschedulable",
                        f"no GPU fits this avatar: {scheduled.message}",
                        {"Retry-After": "10"},
                    )
            if status.phase is not None and status.phase is not api.Phase.PENDING:
                return session
            if time.monotonic() >= deadline:
                return session  # created; the operator has not decided yet
            await asyncio.sleep(poll)
            poll = min(poll * 2, POLL_MAX_SECONDS)
            session = await self._reread(session)

    async def _await_joined(self, session: Obj, request: web.Request) -> Obj:
        limit = self.settings.dispatcher_join_wait_seconds
        try:
            timeout = min(limit, float(request.query.get("timeout", limit)))
        except ValueError:
            raise _bad("timeout", "seconds, as a number") from None
        deadline = time.monotonic() + timeout
        poll = POLL_FIRST_SECONDS
        meta = session["metadata"]
        where = f"{meta['namespace']}/{meta['name']}"
        while True:
            status = api.parse_status(session.get("status"))
            if status.phase is api.Phase.JOINED:
                return session
            if status.phase is not None and status.phase.finished:
                reason = status.end_reason.value if status.end_reason else status.phase.value
                raise LaunchError(
                    502,
                    "session_ended",
                    f"AvatarSession {where} ended before joining ({reason}): {status.message}",
                )
            if time.monotonic() >= deadline:
                raise LaunchError(
                    504,
                    "join_timeout",
                    f"AvatarSession {where} has not joined within {timeout:g} s (phase "
                    f"{status.phase.value if status.phase else 'new'}); it keeps trying: "
                    f"kubectl -n {meta['namespace']} describe avs {meta['name']}",
                )
            await asyncio.sleep(poll)
            poll = min(poll * 2, POLL_MAX_SECONDS)
            session = await self._reread(session)

    async def _reread(self, session: Obj) -> Obj:
        meta = session["metadata"]
        try:
            return await self.api.get_session(meta["namespace"], meta["name"])
        except kube.NotFound:
            raise LaunchError(
                502,
                "session_deleted",
                f"AvatarSession {meta['namespace']}/{meta['name']} was deleted",
            ) from None

    def _answer(self, session: Obj, created: bool) -> web.Response:
        meta = session["metadata"]
        status = api.parse_status(session.get("status"))
        return web.json_response(
            {
                "session": meta["name"],
                "namespace": meta["namespace"],
                "roomId": session["spec"]["roomId"],
                "participantId": session["spec"].get("participantId"),
                "phase": status.phase.value if status.phase else None,
                "message": status.message,
                "created": created,
            },
            status=201 if created else 200,
        )
