"""The `/launch` HTTP endpoint: authenticate, check, find or create the session, wait, answer.

Finding or creating the room's session, and waiting for it, are the agent-side client's
(`avatar_sdk.client.AvatarSessionClient.ensure` and its watch-based waits), so the endpoint and
the agents that create sessions themselves behave alike: one session per room and participant
however many replicas and retries race, a finished one replaced by a new launch, waits that
follow a watch instead of polling. What only `/launch` adds: the cap on live launched sessions,
the caller's token in a Secret the session owns, and answers as JSON with the status code a
dispatcher client expects.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from aiohttp import web

from avatar_operator import kube, manifests, metrics
from avatar_operator import settings as settings_mod
from avatar_operator.launch import auth, request
from avatar_sdk import api
from avatar_sdk import client as sdk_client
from avatar_sdk.objects import Obj

logger = logging.getLogger(__name__)

LABEL_LAUNCHED_BY = "avatar-operator.dev/launched-by"
LAUNCHED_BY = "dispatcher"
ENSURE_TIMEOUT_SECONDS = 10.0  # a previous session of the room still being deleted


class LaunchServer:
    """The `/launch` endpoint of one operator replica (every replica serves it)."""

    def __init__(
        self,
        kube_: kube.Kube,
        settings: settings_mod.OperatorSettings,
        *,
        metrics_: metrics.Metrics | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.kube = kube_
        self.settings = settings
        self.namespace = settings.launch_namespace
        self.metrics = metrics_ or metrics.Metrics()
        self.bearer = (
            auth.BearerToken(settings.dispatcher_token_file)
            if settings.dispatcher_token_file
            else None
        )
        self.own_key = auth.OwnKey(kube_, settings)
        self.limiter = auth.RateLimiter(settings.dispatcher_rate_per_minute, clock=clock)
        # refused requests, per address: counted apart so that they lock out nobody else
        self.failures = auth.RateLimiter(settings.dispatcher_rate_per_minute, clock=clock)
        self.sessions = sdk_client.AvatarSessionClient(kube_.api_client, self.namespace)
        self._create_lock = asyncio.Lock()  # the cap is counted and spent one launch at a time
        # session name → the requests waiting on it: one that gives up deletes the session it
        # created only if no other request has taken it up since
        self._waiting: dict[str, int] = {}

    def routes(self) -> list[web.RouteDef]:
        return [web.post("/launch", self.handle_launch)]

    async def serve(self, host: str = "0.0.0.0") -> web.AppRunner:
        app = web.Application(client_max_size=self.settings.dispatcher_max_body_bytes)
        app.router.add_routes(self.routes())
        # a caller that goes away cancels its handler: what it created is deleted (`_launch`)
        runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
        await runner.setup()
        await web.TCPSite(runner, host, self.settings.dispatcher_port).start()
        logger.info(
            "dispatcher listening",
            extra={"port": self.settings.dispatcher_port, "namespace": self.namespace},
        )
        return runner

    async def handle_launch(self, http: web.Request) -> web.Response:
        caller = http.remote or "unknown"
        try:
            try:
                response = await self._launch(http, caller)
            except (kube.Forbidden, sdk_client.PermissionDenied) as exc:
                raise request.LaunchError(
                    503,
                    "forbidden",
                    f"the operator may not do this in namespace {self.namespace}: {exc} "
                    "(the chart's dispatcher Role grants it there)",
                ) from None
            except sdk_client.NamespaceNotFound as exc:
                raise request.LaunchError(
                    503,
                    "api_error",
                    f"the Kubernetes API refused a step of the launch (404 NotFound): {exc}",
                    {"Retry-After": "5"},
                ) from None
            except (kube.KubeError, sdk_client.ApiError, sdk_client.CRDNotInstalled) as exc:
                raise request.LaunchError(
                    503,
                    "api_error",
                    f"the Kubernetes API refused a step of the launch: {exc}",
                    {"Retry-After": "5"},
                ) from None
            except (OSError, TimeoutError, sdk_client.ApiUnavailable) as exc:
                raise request.LaunchError(
                    503,
                    "api_unreachable",
                    f"the Kubernetes API did not answer: {type(exc).__name__}",
                    {"Retry-After": "5"},
                ) from None
        except request.LaunchError as exc:
            if exc.status >= 500 or exc.status in (401, 429):
                logger.warning(
                    "launch refused",
                    extra={"caller": caller, "status": exc.status, "error": exc.code},
                )
            response = exc.response()
        self.metrics.launches.labels(code=str(response.status)).inc()
        return response

    async def _launch(self, http: web.Request, caller: str) -> web.Response:
        # Authentication first (cheap), then the limits: refused attempts from an address are
        # limited on their own, so that they cannot lock out a valid caller at the same address.
        try:
            authorized = self.bearer is not None and self.bearer.matches(
                http.headers.get("Authorization")
            )
        except auth.ConfigError as exc:  # the token file went away: refuse everyone, say why
            logger.error("dispatcher token unreadable", extra={"error": str(exc)})
            raise request.LaunchError(
                503, "not_configured", "the dispatcher has no bearer token"
            ) from None
        unauthorized = request.LaunchError(
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
        try:
            if not authorized and not self.settings.dispatcher_accept_signed_tokens:
                raise unauthorized
            raw = await self._read_body(http)
            if not authorized and not await self.own_key.signed(raw):
                raise unauthorized
        except request.LaunchError:
            self._limit(self.failures, caller, "refused requests")
            raise
        self._limit(self.limiter, caller, "requests")
        options = request.parse_query(http.query)  # the whole request, before anything is made
        launch = request.parse_launch(raw)
        name = api.session_name_for_room(launch.room_id, launch.participant_id)
        budget = self.settings.dispatcher_answer_budget_seconds
        deadline = asyncio.get_running_loop().time() + budget
        created = False
        self._waiting[name] = self._waiting.get(name, 0) + 1
        try:
            async with asyncio.timeout_at(deadline):
                async with self._create_lock:
                    session, created = await self._find_or_create(name, launch, caller)
                session = await self._await_placement(session, created)
            if options.joined:
                left = deadline - asyncio.get_running_loop().time()
                session = await self._await_joined(session, options.timeout, left)
            return self._answer(session, created)
        except TimeoutError:
            if created:
                await self._take_back(name, "not placed within the answer budget")
            raise request.LaunchError(
                503,
                "not_placed",
                f"the avatar was not placed within {budget:g} s (no operator replica leads, "
                "or the API is slow); nothing was left behind: retry",
                {"Retry-After": "2"},
            ) from None
        except asyncio.CancelledError:
            if created:  # the caller went away before its answer
                await asyncio.shield(self._take_back(name, "the caller went away"))
            raise
        finally:
            self._waiting[name] -= 1
            if not self._waiting[name]:
                del self._waiting[name]

    async def _take_back(self, name: str, why: str) -> None:
        """Delete the session this request created, unless another request waits on it."""
        if self._waiting.get(name, 0) > 1:
            return
        with contextlib.suppress(kube.KubeError, OSError):
            await self.kube.delete_session(self.namespace, name)
            logger.info(
                "launch taken back", extra={"session": f"{self.namespace}/{name}", "why": why}
            )

    def _limit(self, limiter: auth.RateLimiter, caller: str, what: str) -> None:
        """429 when `caller` has used up its bucket in `limiter`."""
        retry = limiter.take(caller)
        if retry:
            raise request.LaunchError(
                429,
                "rate_limited",
                f"more than {self.settings.dispatcher_rate_per_minute} {what} a minute from "
                f"{caller}; retry in {retry:.0f} s",
                {"Retry-After": str(max(1, round(retry)))},
            )

    async def _read_body(self, http: web.Request) -> bytes:
        limit = self.settings.dispatcher_max_body_bytes
        too_big = request.LaunchError(
            413, "body_too_large", f"the body must be at most {limit} bytes"
        )
        if http.content_length is not None and http.content_length > limit:
            raise too_big
        raw = await http.content.read(limit + 1)
        if len(raw) > limit:
            raise too_big
        return raw

    # --- the session and its token -----------------------------------------------------------

    async def _find_or_create(
        self, name: str, launch: request.LaunchRequest, caller: str
    ) -> tuple[Obj, bool]:
        """The room's session for this participant: the live one, or a new one (under the cap),
        with the caller's token in a Secret it owns."""
        live = await self._live_launched()
        if name in live:
            return live[name], False  # the same launch again: one avatar per room/participant
        self._check_cap(len(live))
        try:
            found, created = await self.sessions.ensure(
                launch.room_id,
                name=name,
                participant_id=launch.participant_id,
                spec=self._spec(name, launch),
                labels={
                    LABEL_LAUNCHED_BY: LAUNCHED_BY,
                    "app.kubernetes.io/managed-by": manifests.MANAGED_BY,
                },
                replace_finished=True,
                timeout=ENSURE_TIMEOUT_SECONDS,
            )
        except sdk_client.InvalidSession as exc:
            raise request.LaunchError(422, "invalid_session", str(exc)) from None
        except sdk_client.SessionConflict as exc:
            raise request.LaunchError(409, "conflict", str(exc)) from None
        except sdk_client.AvatarError as exc:
            if type(exc) is not sdk_client.AvatarError:
                raise  # the API's own refusals: `handle_launch` answers them
            # the room's previous session is still being deleted
            raise request.LaunchError(503, "busy", f"{exc}; retry", {"Retry-After": "2"}) from None
        session = _raw(found)
        if not created:
            labels = session["metadata"].get("labels") or {}
            if labels.get(LABEL_LAUNCHED_BY) != LAUNCHED_BY:
                raise request.LaunchError(
                    409,
                    "conflict",
                    f"AvatarSession {self.namespace}/{name} for this room and participant exists "
                    "and was not created by the dispatcher; delete it or use another "
                    "participant_id",
                )
            return session, False  # the same launch again: one avatar per room/participant
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

    async def _live_launched(self) -> dict[str, Obj]:
        """The live sessions launched here, by name: the cap counts them, and a repeated launch
        finds its session among them without another request."""
        sessions = await self.kube.list_sessions(
            self.namespace, label_selector=f"{LABEL_LAUNCHED_BY}={LAUNCHED_BY}"
        )
        return {
            s["metadata"]["name"]: s
            for s in sessions
            if not (s["metadata"].get("deletionTimestamp"))
            and not (api.parse_status(s.get("status")).phase or api.Phase.PENDING).finished
        }

    def _check_cap(self, live: int) -> None:
        cap = self.settings.dispatcher_max_sessions
        if live >= cap:
            raise request.LaunchError(
                429,
                "too_many_sessions",
                f"{live} sessions launched through the dispatcher are live, the cap is {cap} "
                f"({settings_mod.ENV_PREFIX}DISPATCHER_MAX_SESSIONS); retry when one ends",
                {"Retry-After": "30"},
            )

    def _spec(self, name: str, launch: request.LaunchRequest) -> Obj:
        spec: Obj = dict(self.settings.dispatcher_session_template)
        spec["credentials"] = {
            "tokenSecretRef": {"name": manifests.caller_token_secret_name(name), "key": "token"}
        }
        if launch.signaling_base_url:
            spec["signalingBaseUrl"] = launch.signaling_base_url
        return spec

    async def _store_token(self, session: Obj, token: str) -> None:
        """The caller's token, in a Secret the session owns (deleted with it)."""
        secret = manifests.caller_token_secret(session, token)
        meta = session["metadata"]
        try:
            await self.kube.create(secret, answer=False)
        except kube.Conflict:  # left by an earlier session of the same name: take it over
            await self.kube.replace(secret)
        except kube.KubeError:
            # without its token the session cannot start: take it back, tell the caller
            with contextlib.suppress(kube.KubeError):
                await self.kube.delete_session(meta["namespace"], meta["name"])
            raise

    # --- waiting for the operator (watching) -------------------------------------------------

    async def _await_placement(self, session: Obj, created: bool) -> Obj:
        """Until the operator has placed the session (or found no GPU for it), at most
        `dispatcher_placement_wait_seconds`; then the session as it is."""
        meta = session["metadata"]
        latest = session
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.settings.dispatcher_placement_wait_seconds):
                async for event in self.sessions.watch(meta["name"]):
                    if event.type == sdk_client.DELETED:
                        raise _deleted(meta)
                    if event.object["metadata"].get("uid") != meta.get("uid"):
                        continue
                    latest = event.object
                    status = api.parse_status(latest.get("status"))
                    capacity = sdk_client.unschedulable_message(status)
                    if capacity is not None and created:
                        # the caller is told no: the session must not start behind its back
                        await self.kube.delete_session(meta["namespace"], meta["name"])
                        raise request.LaunchError(
                            503,
                            "unschedulable",
                            f"no GPU fits this avatar: {capacity}",
                            {"Retry-After": "10"},
                        )
                    if status.phase is not None and status.phase is not api.Phase.PENDING:
                        return latest
        if created:
            raise TimeoutError  # not placed in time: `_launch` takes it back
        return latest  # an existing session the operator has not decided on yet

    async def _await_joined(self, session: Obj, asked: float | None, budget_left: float) -> Obj:
        limit = self.settings.dispatcher_join_wait_seconds
        timeout = min(limit, asked) if asked is not None else limit
        timeout = max(0.001, min(timeout, budget_left))
        meta = session["metadata"]
        where = f"{meta['namespace']}/{meta['name']}"
        try:
            joined = await self.sessions.wait_until_joined(meta["name"], timeout)
        except sdk_client.SessionFailed as exc:
            status = exc.session.status if exc.session else api.AvatarSessionStatus()
            reason = status.end_reason.value if status.end_reason else "Ended"
            raise request.LaunchError(
                502,
                "session_ended",
                f"AvatarSession {where} ended before joining ({reason}): {status.message}",
            ) from None
        except (sdk_client.SessionDeleted, sdk_client.SessionNotFound):
            raise _deleted(meta) from None
        except sdk_client.JoinTimeout as exc:
            phase = exc.session.status.phase if exc.session else None
            raise request.LaunchError(
                504,
                "join_timeout",
                f"AvatarSession {where} has not joined within {timeout:g} s (phase "
                f"{phase.value if phase else 'new'}); it keeps trying: "
                f"kubectl -n {meta['namespace']} describe avs {meta['name']}",
            ) from None
        return _raw(joined)

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


def _raw(session: api.AvatarSession) -> Obj:
    """The typed session back as the raw body `_answer` reads."""
    return {
        "metadata": dict(session.metadata),
        "spec": session.spec.model_dump(mode="json", by_alias=True, exclude_none=True),
        "status": session.status.model_dump(mode="json", by_alias=True, exclude_none=True),
    }


def _deleted(meta: Obj) -> request.LaunchError:
    return request.LaunchError(
        502,
        "session_deleted",
        f"AvatarSession {meta['namespace']}/{meta['name']} was deleted",
    )
