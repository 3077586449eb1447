"""The status relay: a worker speaks for its own session, and only about what it may report."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from avatar_operator import relay
from avatar_sdk import api, reports

KEY = b"k" * 32
SESSIONS = {
    "agents/a": {"metadata": {"namespace": "agents", "name": "a", "uid": "uid-a"}, "status": {}},
    "agents/b": {"metadata": {"namespace": "agents", "name": "b", "uid": "uid-b"}, "status": {}},
}


def path(name: str, namespace: str = "agents") -> str:
    return f"/apis/{api.GROUP}/{api.VERSION}/namespaces/{namespace}/{api.PLURAL}/{name}/status"


def bearer(name: str, uid: str | None = None) -> dict[str, str]:
    token = reports.status_token(KEY, "agents", name, uid or f"uid-{name}")
    return {"Authorization": f"Bearer {token}"}


class Recorder:
    def __init__(self) -> None:
        self.applied: list[tuple[str, dict[str, Any]]] = []
        self.active = True

    async def apply(self, session: dict[str, Any], report: dict[str, Any]) -> dict[str, Any]:
        self.applied.append((session["metadata"]["name"], report))
        return {**session, "status": report}


@pytest.fixture
async def setup() -> AsyncIterator[tuple[TestClient, Recorder]]:
    recorder = Recorder()
    status_relay = relay.StatusRelay(
        KEY,
        lookup=lambda ns, name: SESSIONS.get(f"{ns}/{name}"),
        apply=recorder.apply,
        is_active=lambda: recorder.active,
    )
    app = web.Application()
    app.router.add_routes(status_relay.routes())
    async with TestClient(TestServer(app)) as client:
        yield client, recorder


async def test_a_worker_reports_its_own_state(setup: tuple[TestClient, Recorder]) -> None:
    client, recorder = setup
    report = {"status": {"phase": "Joined", "playback": {"state": "Speaking", "segments": 2}}}
    response = await client.patch(path("a"), json=report, headers=bearer("a"))
    assert response.status == 200
    assert recorder.applied == [("a", report["status"])]


async def test_a_worker_cannot_patch_another_session(setup: tuple[TestClient, Recorder]) -> None:
    client, recorder = setup
    response = await client.patch(path("b"), json={"status": {"fps": 30}}, headers=bearer("a"))
    assert response.status == 401
    assert (await response.json())["kind"] == "Status"
    assert recorder.applied == []


async def test_a_recreated_session_refuses_the_old_credential(
    setup: tuple[TestClient, Recorder],
) -> None:
    client, _ = setup
    old = bearer("a", uid="uid-of-a-deleted-session")
    response = await client.patch(path("a"), json={"status": {"fps": 30}}, headers=old)
    assert response.status == 401


async def test_unknown_session_and_missing_token_look_the_same(
    setup: tuple[TestClient, Recorder],
) -> None:
    client, _ = setup
    unknown = await client.patch(path("zzz"), json={"status": {"fps": 1}}, headers=bearer("zzz"))
    missing = await client.patch(path("a"), json={"status": {"fps": 1}})
    assert unknown.status == missing.status == 401
    assert (await unknown.json())["message"] == (await missing.json())["message"]


@pytest.mark.parametrize(
    ("status", "code", "names"),
    [
        ({"placement": {"node": "x"}}, 403, "status.placement"),
        ({"conditions": []}, 403, "status.conditions"),
        ({"podName": "other"}, 403, "status.podName"),
        ({"phase": "Starting"}, 403, "status.phase"),
        ({"phase": "Ended", "endReason": "NodeLost"}, 403, "status.endReason"),
        ({"fps": -1}, 422, "status.fps"),
        ({"playback": {"state": "Dancing"}}, 422, "status.playback.state"),
        ({}, 422, "non-empty"),
    ],
)
async def test_what_a_worker_may_not_write_is_refused_by_name(
    setup: tuple[TestClient, Recorder], status: dict[str, Any], code: int, names: str
) -> None:
    client, recorder = setup
    response = await client.patch(path("a"), json={"status": status}, headers=bearer("a"))
    assert response.status == code
    assert names in (await response.json())["message"]
    assert recorder.applied == []


async def test_spec_cannot_be_reached_through_the_relay(setup: tuple[TestClient, Recorder]) -> None:
    client, _ = setup
    body = {"spec": {"roomId": "elsewhere"}, "status": {"fps": 1}}
    response = await client.patch(path("a"), json=body, headers=bearer("a"))
    assert response.status == 422


async def test_garbage_and_oversized_bodies(setup: tuple[TestClient, Recorder]) -> None:
    client, _ = setup
    garbage = await client.patch(path("a"), data=b"{nope", headers=bearer("a"))
    assert garbage.status == 400
    huge = await client.patch(
        path("a"),
        data=b'{"status": {"fps": 1, "x": "' + b"a" * 20_000 + b'"}}',
        headers=bearer("a"),
    )
    assert huge.status == 413


async def test_a_standby_replica_asks_to_retry(setup: tuple[TestClient, Recorder]) -> None:
    client, recorder = setup
    recorder.active = False
    response = await client.patch(path("a"), json={"status": {"fps": 1}}, headers=bearer("a"))
    assert response.status == 503
    assert response.headers["Retry-After"] == "1"


async def test_a_worker_may_read_its_session(setup: tuple[TestClient, Recorder]) -> None:
    client, _ = setup
    response = await client.get(path("a"), headers=bearer("a"))
    assert response.status == 200
    assert (await response.json())["metadata"]["name"] == "a"


def test_a_short_key_is_refused() -> None:
    with pytest.raises(ValueError, match="16 bytes"):
        relay.StatusRelay(b"short", lambda ns, n: None, Recorder().apply, lambda: True)


@pytest.mark.parametrize(
    ("raw", "code", "text"),
    [
        (b'{"status": {"fps": NaN}}', 400, "NaN"),
        (b'{"status": {"fps": Infinity}}', 400, "Infinity"),
        (b'{"status": {"syncErrorMs": 1e400}}', 400, "too large"),
        (b"[" * 8000, 400, "nested"),
        (b'{"status": {"playback": ' + b"[" * 3000 + b"]" * 3000 + b"}}", 400, "nested"),
        (b'{"status": {"joinedAt": "2999-01-01T00:00:00Z"}}', 422, "in the future"),
        (b'{"status": {"endedAt": null}}', 403, "may not clear"),
        (b'{"status": {"joinedAt": "soon"}}', 422, "RFC 3339"),
        (b"\xff", 400, "UTF-8"),
    ],
)
async def test_hostile_reports_are_refused_naming_the_problem(
    setup: tuple[TestClient, Recorder], raw: bytes, code: int, text: str
) -> None:
    """Nothing a worker sends makes the relay answer 500 or store what the API could not serve
    as standard JSON (NaN, Infinity); a worker cannot move or clear its own times."""
    client, recorder = setup
    response = await client.patch(
        path("a"), data=raw, headers={**bearer("a"), "Content-Type": "application/json"}
    )
    assert response.status == code
    assert text in (await response.json())["message"]
    assert recorder.applied == []
