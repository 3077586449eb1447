"""The status relay: how a worker reports into its own session's status without API access.

A worker Pod has no Kubernetes credentials (`automountServiceAccountToken: false`). It sends
its state to the operator instead, with exactly the request it would send the API server — a
JSON merge patch to `/apis/avatar-operator.dev/v1alpha1/namespaces/NS/avatarsessions/NAME/status`
with a bearer token — and the operator writes the status for it. Why not a per-session
ServiceAccount + Role limited by `resourceNames`:

* RBAC cannot limit *fields*: with `patch` on its status a worker could rewrite its placement,
  phase or conditions, and the status is the operator's ledger. Here only the fields a worker
  may report get through (`avatar_sdk.reports.REPORTABLE`); anything else is refused with 403
  naming the field.
* A worker holds no token that the API server accepts, so a compromised renderer cannot even
  list Secrets it was never granted; it can speak for its own session and nothing else.
* Three fewer objects to create and delete per session (ServiceAccount, Role, RoleBinding):
  faster starts and fewer API writes (see the README's write budget).

The credential is `HMAC-SHA256(relay key, namespace/name/uid)`, put in the session's Secret
beside the join token. It is bound to the session's uid, so a session deleted and re-created
under the same name does not accept its predecessor's worker. Every operator replica derives the
same credentials from the same key (a Secret of the chart), so failover keeps workers reporting;
standby replicas answer 503 and workers retry.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Awaitable, Callable

from aiohttp import web

from avatar_sdk import api, reports, strictjson
from avatar_sdk.objects import Obj

logger = logging.getLogger(__name__)


MAX_BODY_BYTES = 16 * 1024


def status_body(code: int, reason: str, message: str) -> web.Response:
    body = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }
    # a standby: closing the connection lets the worker's retry be balanced to the leader
    headers = {"Retry-After": "1", "Connection": "close"} if code == 503 else None
    return web.json_response(body, status=code, headers=headers)


ApplyFn = Callable[[Obj, Obj], Awaitable[Obj]]
LookupFn = Callable[[str, str], Obj | None]


class StatusRelay:
    """The aiohttp routes of the relay; `apply` turns a report into the session's status."""

    def __init__(
        self, key: bytes, lookup: LookupFn, apply: ApplyFn, is_active: Callable[[], bool]
    ) -> None:
        if len(key) < 16:
            raise ValueError("the status relay key must be at least 16 bytes")
        self._key = key
        self._lookup = lookup
        self._apply = apply
        self._is_active = is_active

    def token_for(self, session: Obj) -> str:
        meta = session["metadata"]
        return reports.status_token(self._key, meta["namespace"], meta["name"], meta.get("uid", ""))

    def routes(self) -> list[web.RouteDef]:
        path = (
            f"/apis/{api.GROUP}/{api.VERSION}/namespaces/{{namespace}}/{api.PLURAL}/{{name}}/status"
        )
        return [web.patch(path, self._patch), web.get(path, self._get)]

    def _authorize(self, request: web.Request) -> Obj:
        if not self._is_active():
            raise reports.ReportError(
                503, "ServiceUnavailable", "this operator replica is not the leader"
            )
        namespace, name = request.match_info["namespace"], request.match_info["name"]
        session = self._lookup(namespace, name)
        header = request.headers.get("Authorization", "")
        presented = header.removeprefix("Bearer ").strip() if header.startswith("Bearer ") else ""
        # The same answer whether the session is unknown or the token is wrong: a worker
        # must not learn which sessions exist.
        if session is None or not hmac.compare_digest(presented, self.token_for(session)):
            raise reports.ReportError(401, "Unauthorized", "invalid or missing status credential")
        return session

    async def _get(self, request: web.Request) -> web.StreamResponse:
        try:
            session = self._authorize(request)
        except reports.ReportError as exc:
            return status_body(exc.code, exc.reason, str(exc))
        return web.json_response(session)

    async def _patch(self, request: web.Request) -> web.StreamResponse:
        try:
            session = self._authorize(request)
            if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
                raise reports.ReportError(413, "RequestEntityTooLarge", "status report too large")
            raw = await request.content.read(MAX_BODY_BYTES + 1)
            if len(raw) > MAX_BODY_BYTES:
                raise reports.ReportError(413, "RequestEntityTooLarge", "status report too large")
            try:
                body = strictjson.loads(raw)
            except strictjson.JSONRefused as exc:
                raise reports.ReportError(400, "BadRequest", str(exc)) from None
            report = reports.parse_report(body)
            updated = await self._apply(session, report)
        except reports.ReportError as exc:
            if exc.code not in (401, 503):
                logger.info(
                    "worker report refused",
                    extra={"session": request.match_info["name"], "why": str(exc)},
                )
            return status_body(exc.code, exc.reason, str(exc))
        return web.json_response(updated)
