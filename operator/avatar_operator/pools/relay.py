"""The assignment long-poll on the status relay (`avatar_sdk.assignment` has the protocol).

Served beside the status routes, on the relay's TLS port: a pool worker's credential is
checked like a status credential (the same 401 for an unknown worker and a wrong credential,
so a worker learns nothing about the others), and only the leader answers (503 elsewhere: the
worker retries and reaches it). The answer is the worker's assignment once its session has
claimed it; until then the request is held open for `timeoutSeconds` (204 after). A worker
that is gone, or no longer its pool's, is told 410 Gone and exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from aiohttp import web

from avatar_operator.pools import manifests as pool_manifests
from avatar_operator.relay import status_body
from avatar_sdk import assignment, pools

if TYPE_CHECKING:
    from avatar_operator.pools.controller import PoolController

logger = logging.getLogger(__name__)


class AssignmentRelay:
    """The route: `GET assignment.ASSIGNMENT_PATH?timeoutSeconds=N`."""

    def __init__(
        self,
        key: bytes,
        controller: Callable[[], PoolController | None],
        is_active: Callable[[], bool],
    ) -> None:
        self._key = key
        self._controller = controller
        self._is_active = is_active

    def routes(self) -> list[web.RouteDef]:
        return [web.get(assignment.ASSIGNMENT_PATH, self._get)]

    async def _get(self, request: web.Request) -> web.StreamResponse:
        controller = self._controller()
        if not self._is_active() or controller is None:
            return status_body(503, "ServiceUnavailable", "this operator replica is not the leader")
        namespace, name = request.match_info["namespace"], request.match_info["worker"]
        header = request.headers.get("Authorization", "")
        presented = header.removeprefix("Bearer ").strip() if header.startswith("Bearer ") else ""
        expected = assignment.worker_token(self._key, namespace, name)
        pod = controller.worker(namespace, name)
        if pod is None or not hmac.compare_digest(presented, expected):
            return status_body(401, "Unauthorized", "invalid or missing pool credential")
        try:
            wait = float(request.query.get("timeoutSeconds", assignment.DEFAULT_WAIT_SECONDS))
        except ValueError:
            return status_body(400, "BadRequest", "timeoutSeconds must be a number of seconds")
        wait = max(0.0, min(wait, float(assignment.MAX_WAIT_SECONDS)))
        if pool_manifests.state_of(pod) is pools.PoolWorkerState.STARTING:
            await controller.mark_ready(pod)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        while True:
            pod = controller.worker(namespace, name)
            if pod is None or pool_manifests.is_gone(pod):
                return status_body(410, "Gone", "this worker is no longer in its pool")
            given = controller.assignments.get(f"{namespace}/{name}")
            if given is not None:
                return web.json_response(given.to_wire())
            left = deadline - loop.time()
            if left <= 0:
                return web.Response(status=204)
            changed = controller.changed(namespace, name)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), timeout=left)
