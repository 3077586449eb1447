"""Status reporting (against a loopback server speaking the relay's API, in plain HTTP and in
TLS) and health probes."""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import ssl
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from avatar_devtools import relaytls
from avatar_sdk import api, reports
from avatar_worker.health import HealthServer
from avatar_worker.status import KubeApi, StatusReporter

TOKEN = "status-credential-0123456789abcdef"
PATH = "/apis/avatar-operator.dev/v1alpha1/namespaces/ns1/avatarsessions/s1/status"


class FakeRelay:
    """Records status PATCHes; validates them as the operator's relay does."""

    def __init__(
        self,
        failures: int = 0,
        failure_status: int = 503,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.requests: list[dict[str, Any]] = []
        self.failures = failures
        self.failure_status = failure_status
        self.ssl_context = ssl_context
        self.status: dict[str, Any] = {}
        app = web.Application()
        app.router.add_patch(PATH, self._patch)
        self._runner = web.AppRunner(app)
        self.url = ""

    async def start(self) -> None:
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0, ssl_context=self.ssl_context)
        await site.start()
        scheme = "https" if self.ssl_context else "http"
        self.url = f"{scheme}://127.0.0.1:{self._runner.addresses[0][1]}"

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


def _reporter(
    server: FakeRelay, token_file: str, interval: float = 0.2, ca_file: str | None = None
) -> StatusReporter:
    return StatusReporter(
        KubeApi.for_relay(server.url, token_file, ca_file),
        namespace="ns1",
        name="s1",
        min_interval=interval,
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


# --- TLS: the relay's certificate is verified against the CA from the Secret, and that alone


def _serving(tls: relaytls.RelayTLS) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(tls.cert_file, tls.key_file)
    return context


async def _until(condition: Any, within: float = 5.0) -> None:
    async with asyncio.timeout(within):
        while not condition():
            await asyncio.sleep(0.01)


async def test_a_relay_with_a_certificate_of_the_given_ca_gets_the_reports(
    token_file: str, tmp_path: Path
) -> None:
    tls = relaytls.make(tmp_path / "relay")
    server = FakeRelay(ssl_context=_serving(tls))
    await server.start()
    assert server.url.startswith("https://127.0.0.1:")
    reporter = _reporter(server, token_file, interval=0.05, ca_file=str(tls.ca_file))
    reporter.start()
    reporter.joined()
    await reporter.aclose()
    await server.aclose()
    assert server.status["phase"] == "Joined" and reporter.failures == 0
    assert server.requests[0]["headers"]["Authorization"] == f"Bearer {TOKEN}"


@pytest.mark.parametrize(
    ("impostor", "why"),
    [
        ("signed by another CA", "unable to get local issuer certificate"),
        ("for another host", "mismatch, certificate is not valid for '127.0.0.1'"),
        ("no CA given: the system trust store", "unable to get local issuer certificate"),
        ("a CA file that cannot be read", "cannot load the CA file"),
    ],
)
async def test_a_relay_failing_verification_is_never_sent_the_token(
    impostor: str, why: str, token_file: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    trusted = relaytls.make(tmp_path / "trusted")
    ca_file: str | None = str(trusted.ca_file)
    served = trusted
    if impostor == "signed by another CA":
        served = relaytls.make(tmp_path / "other-ca")
    elif impostor == "for another host":
        served = relaytls.make(tmp_path / "trusted", ("relay.elsewhere.svc",), name="elsewhere")
    elif impostor.startswith("no CA given"):
        ca_file = None
    else:
        ca_file = str(tmp_path / "missing" / "status-ca.crt")
    server = FakeRelay(ssl_context=_serving(served))
    await server.start()
    reporter = _reporter(server, token_file, interval=0.02, ca_file=ca_file)
    reporter.start()
    reporter.joined()
    await _until(lambda: reporter.failures >= 3)  # retried, with the usual backoff
    await reporter.aclose(flush_timeout=0.2)
    await server.aclose()
    assert server.requests == []  # no request reached it: neither the token nor the report
    assert reporter.writes == 0 and reporter.pending
    refused = [
        r for r in caplog.records if r.message == "status endpoint not trusted, nothing sent"
    ]
    assert refused and all(why in r.__dict__["error"] for r in refused)
    assert refused[0].__dict__["url"] == server.url
    logged = caplog.text + repr([r.__dict__ for r in caplog.records])
    assert TOKEN not in logged


async def test_a_report_refused_for_the_certificate_goes_out_once_the_relay_has_the_right_one(
    token_file: str, tmp_path: Path
) -> None:
    trusted = relaytls.make(tmp_path / "trusted")
    context = _serving(relaytls.make(tmp_path / "other-ca"))
    server = FakeRelay(ssl_context=context)
    await server.start()
    reporter = _reporter(server, token_file, interval=0.02, ca_file=str(trusted.ca_file))
    reporter.start()
    reporter.joined()
    await _until(lambda: reporter.failures >= 1)
    context.load_cert_chain(trusted.cert_file, trusted.key_file)  # for the next handshakes
    await _until(lambda: reporter.writes >= 1)
    await reporter.aclose()
    await server.aclose()
    assert server.status["phase"] == "Joined"
