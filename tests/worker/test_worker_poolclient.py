"""A warm worker's wait for its assignment (`avatar_worker.poolclient`) against a relay that
answers as the operator's does: 204 until claimed, 200 with the assignment, 503 from a standby,
410 when the pool lets the worker go, 401 for a wrong credential."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from aiohttp import web

from avatar_sdk import assignment
from avatar_worker import poolclient

TOKEN = "pool-secret"
ASSIGNED = {
    "sessionName": "s1",
    "sessionNamespace": "agents",
    "roomId": "room-1",
    "participantId": "avatar_1",
    "joinToken": "join-jwt",
    "statusToken": "status-hmac",
}


class Relay:
    """Answers each poll with the next of `answers` (the last one repeats)."""

    def __init__(self, answers: list[Callable[[], web.Response]]) -> None:
        self.answers = answers
        self.polls: list[dict[str, Any]] = []

    async def handle(self, request: web.Request) -> web.Response:
        self.polls.append(
            {
                "auth": request.headers.get("Authorization"),
                "timeout": request.query.get("timeoutSeconds"),
                "path": request.path,
            }
        )
        index = min(len(self.polls) - 1, len(self.answers) - 1)
        return self.answers[index]()


@pytest_asyncio.fixture
async def serve() -> AsyncIterator[Callable[[Relay], Any]]:
    runners: list[web.AppRunner] = []

    async def start(relay: Relay) -> str:
        app = web.Application()
        app.router.add_get(assignment.ASSIGNMENT_PATH, relay.handle)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        runners.append(runner)
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return f"http://127.0.0.1:{port}"

    yield start
    for runner in runners:
        await runner.cleanup()


def client(url: str, tmp_path: Path, token: str = TOKEN) -> poolclient.PoolClient:
    token_file = tmp_path / "pool-token"
    token_file.write_text(token + "\n")
    return poolclient.PoolClient(
        url, namespace="agents", worker="warm-abc123", token_file=str(token_file), wait_seconds=2
    )


async def test_waits_through_no_content_and_a_standby_then_gets_its_assignment(
    serve: Any, tmp_path: Path
) -> None:
    relay = Relay(
        [
            lambda: web.Response(status=204),
            lambda: web.Response(status=503, headers={"Retry-After": "1"}),
            lambda: web.json_response(ASSIGNED),
        ]
    )
    url = await serve(relay)
    given = await client(url, tmp_path).wait(asyncio.Event())
    assert given is not None
    assert (given.session_name, given.room_id, given.participant_id) == ("s1", "room-1", "avatar_1")
    assert given.join_token.get_secret_value() == "join-jwt"
    assert "join-jwt" not in repr(given) and "status-hmac" not in repr(given)
    assert len(relay.polls) == 3
    assert relay.polls[0]["auth"] == f"Bearer {TOKEN}"
    assert relay.polls[0]["timeout"] == "2"
    assert relay.polls[0]["path"] == assignment.path_for("agents", "warm-abc123")


async def test_released_by_its_pool_it_gets_none(serve: Any, tmp_path: Path) -> None:
    url = await serve(Relay([lambda: web.Response(status=410)]))
    assert await client(url, tmp_path).wait(asyncio.Event()) is None


async def test_a_credential_refused_again_and_again_is_an_error_that_says_what_to_check(
    serve: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(poolclient, "RETRY_MIN_SECONDS", 0.001)
    relay = Relay([lambda: web.Response(status=401)])
    url = await serve(relay)
    with pytest.raises(poolclient.AssignmentError, match="relay key"):
        await client(url, tmp_path, token="wrong").wait(asyncio.Event())
    assert len(relay.polls) == poolclient.REFUSED_LIMIT


async def test_an_assignment_that_is_not_valid_is_refused_by_name(
    serve: Any, tmp_path: Path
) -> None:
    url = await serve(Relay([lambda: web.json_response({**ASSIGNED, "roomId": "no spaces"})]))
    with pytest.raises(poolclient.AssignmentError, match=r"roomId|room_id"):
        await client(url, tmp_path).wait(asyncio.Event())


async def test_stop_ends_the_wait_at_once(serve: Any, tmp_path: Path) -> None:
    release = asyncio.Event()

    async def hang(_: web.Request) -> web.Response:
        await release.wait()  # a long-poll the relay holds open
        return web.Response(status=204)

    app = web.Application()
    app.router.add_get(assignment.ASSIGNMENT_PATH, hang)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    stop = asyncio.Event()
    waiting = asyncio.create_task(client(f"http://127.0.0.1:{port}", tmp_path).wait(stop))
    await asyncio.sleep(0.2)
    stop.set()
    async with asyncio.timeout(2):
        assert await waiting is None
    release.set()
    await runner.cleanup()


async def test_a_missing_credential_file_is_named(tmp_path: Path) -> None:
    missing = poolclient.PoolClient(
        "https://relay:8443", namespace="agents", worker="w", token_file=str(tmp_path / "nope")
    )
    with pytest.raises(poolclient.AssignmentError, match="nope"):
        await missing.wait(asyncio.Event())
