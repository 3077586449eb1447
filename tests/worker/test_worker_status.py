"""Status reporting (against a loopback server speaking the relay's API) and health probes."""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from avatar_sdk import api, reports
from avatar_worker.health import HealthServer
from avatar_worker.status import KubeApi, StatusReporter

TOKEN = "status-credential-0123456789abcdef"
PATH = "/apis/avatar-operator.dev/v1alpha1/namespaces/ns1/avatarsessions/s1/status"


class FakeRelay:
    """Records status PATCHes; validates them as the operator's relay does."""

    def __init__(self, failures: int = 0, failure_status: int = 503) -> None:
        self.requests: list[dict[str, Any]] = []
        self.failures = failures
        self.failure_status = failure_status
        self.status: dict[str, Any] = {}
        app = web.Application()
        app.router.add_patch(PATH, self._patch)
        self._runner = web.AppRunner(app)
        self.url = ""

    async def start(self) -> None:
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"

    async def aclose(self) -> None:
        await self._runner.cleanup()

    async def _patch(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.requests.append(
            {"at": time.monotonic(), "headers": dict(request.headers), "body": body}
        )
        if self.failures:
            self.failures -= 1
            return web.json_response({"message": "try later"}, status=self.failure_status)
        self.status.update(reports.parse_report(body))  # refuses what a worker may not write
        return web.json_response({"status": self.status})


@pytest.fixture
def token_file(tmp_path: Path) -> str:
    path = tmp_path / "status-token"
    path.write_text(TOKEN + "\n")
    return str(path)


def _reporter(server: FakeRelay, token_file: str, interval: float = 0.2) -> StatusReporter:
    return StatusReporter(
        KubeApi.for_relay(server.url, token_file), namespace="ns1", name="s1", min_interval=interval
    )


def _playback(reporter: StatusReporter, i: int, speaking: bool = True) -> None:
    reporter.playback(
        speaking=speaking,
        segments=i,
        interrupts=0,
        position=i / 10,
        last_activity_at=api.now(),
        fps=29.9,
        vram_used_mib=700,
        sync_error_ms=0.4,
    )


async def test_a_session_is_reported_as_merge_patches_the_relay_accepts(token_file: str) -> None:
    server = FakeRelay()
    await server.start()
    reporter = _reporter(server, token_file)
    reporter.start()
    reporter.joined()
    _playback(reporter, 1)
    await asyncio.sleep(0.3)
    _playback(reporter, 2, speaking=False)
    reporter.ended(api.EndReason.AGENT_LEFT)
    await reporter.aclose()
    await server.aclose()
    first = server.requests[0]
    assert first["headers"]["Content-Type"] == "application/merge-patch+json"
    assert first["headers"]["Authorization"] == f"Bearer {TOKEN}"
    assert server.status["phase"] == "Ended" and server.status["endReason"] == "AgentLeft"
    assert server.status["playback"]["segments"] == 2
    assert server.status["playback"]["state"] == "Idle"
    assert server.status["vramUsedMiB"] == 700 and "joinedAt" in server.status


async def test_updates_coalesce_to_one_write_per_interval_and_never_block(
    token_file: str,
) -> None:
    server = FakeRelay()
    await server.start()
    reporter = _reporter(server, token_file, interval=0.2)
    reporter.start()
    for i in range(100):
        _playback(reporter, i)
        await asyncio.sleep(0.007)
    await reporter.aclose()
    await server.aclose()
    times = [r["at"] for r in server.requests]
    assert 2 <= len(times) <= 6  # ~0.7 s of updates at ≤ 1 write per 0.2 s
    assert all(b - a >= 0.19 for a, b in itertools.pairwise(times))
    assert server.status["playback"]["segments"] == 99  # the last value always goes out
    # never blocks: an update is a plain call that returns without awaiting any I/O (a timing
    # bound here would only measure how busy the machine is)
    assert not asyncio.iscoroutinefunction(reporter.playback)


async def test_failed_writes_are_retried_and_the_token_is_never_logged(
    token_file: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    server = FakeRelay(failures=2)
    await server.start()
    reporter = _reporter(server, token_file, interval=0.05)
    reporter.start()
    reporter.joined()
    await asyncio.sleep(0.5)
    await reporter.aclose()
    await server.aclose()
    assert len(server.requests) == 3 and server.status["phase"] == "Joined"
    assert "status write failed" in caplog.text
    assert TOKEN not in caplog.text


async def test_end_reasons_a_worker_may_not_report_are_left_out(token_file: str) -> None:
    server = FakeRelay()
    await server.start()
    reporter = _reporter(server, token_file)
    reporter.start()
    reporter.ended(api.EndReason.IDLE_TIMEOUT)
    await reporter.aclose()
    await server.aclose()
    assert server.status["phase"] == "Ended" and "endReason" not in server.status


def test_where_the_status_goes() -> None:
    assert KubeApi.from_env({}) is None
    override = KubeApi.from_env(
        {"AVATAR_KUBE_API": "http://127.0.0.1:9/", "AVATAR_KUBE_INSECURE": "1"}
    )
    assert override == KubeApi("http://127.0.0.1:9", None, None, True)
    cluster = KubeApi.from_env(
        {"KUBERNETES_SERVICE_HOST": "fd00::1", "KUBERNETES_SERVICE_PORT": "443"}
    )
    assert cluster is not None and cluster.url == "https://[fd00::1]:443"
    assert cluster.token_file == "/var/run/secrets/kubernetes.io/serviceaccount/token"


async def test_health_probes_follow_the_media_loop() -> None:
    state: dict[str, Any] = {"joined": False, "last": None}
    server = HealthServer(
        0,
        host="127.0.0.1",
        joined=lambda: bool(state["joined"]),
        last_frame_at=lambda: state["last"],
        stall_after=1.0,
    )
    await server.start()
    base = f"http://127.0.0.1:{server.port}"

    async def codes(session: aiohttp.ClientSession) -> tuple[int, int]:
        async with session.get(base + "/healthz") as alive, session.get(base + "/readyz") as ready:
            return alive.status, ready.status

    async with aiohttp.ClientSession() as session:
        assert await codes(session) == (200, 503)  # starting: alive, not ready
        state.update(joined=True, last=time.monotonic())
        assert await codes(session) == (200, 200)
        state.update(last=time.monotonic() - 5)
        assert await codes(session) == (503, 503)  # wedged
    await server.aclose()
    assert json.dumps(state)


class StandbyFirstRelay(FakeRelay):
    """Two operator replicas behind one Service, as kube-proxy balances them: per connection.
    The first `standby_connections` connections land on the standby, which answers 503."""

    def __init__(self, standby_connections: int) -> None:
        super().__init__()
        self.standby_left = standby_connections
        self.roles: dict[Any, str] = {}

    async def _patch(self, request: web.Request) -> web.Response:
        peer = request.transport.get_extra_info("peername") if request.transport else None
        if peer not in self.roles:
            self.roles[peer] = "standby" if self.standby_left > 0 else "leader"
            self.standby_left -= 1
        if self.roles[peer] == "standby":
            await request.read()
            return web.json_response({"message": "not the leader"}, status=503)
        return await super()._patch(request)


async def test_a_standby_replica_is_left_for_the_leader_even_at_the_end(token_file: str) -> None:
    """A 503 (a standby behind the relay's Service) is retried on a fresh connection, soon —
    and the final report still goes out after many failures earlier in the session."""
    server = StandbyFirstRelay(standby_connections=6)
    await server.start()
    reporter = _reporter(server, token_file, interval=0.05)
    reporter.start()
    reporter.joined()
    reporter.ended(api.EndReason.ROOM_ENDED)
    started = time.monotonic()
    await reporter.aclose(flush_timeout=5.0)
    await server.aclose()
    assert reporter.failures >= 6
    assert server.status["phase"] == "Ended" and server.status["endReason"] == "RoomEnded"
    assert list(server.roles.values()).count("standby") == 6  # one connection per retry
    assert time.monotonic() - started < 4.0  # retried briskly, not with the growing backoff
