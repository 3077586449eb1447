"""Warm pools against the API: an AvatarPool keeps its idle workers, a session that names it
claims a ready one (once: the API server decides), the worker gets its assignment over the
relay in TLS, and the pool refills. The worker here is the test: it asks for its assignment
with the pool credential from its Secret, as `avatar_worker.poolclient` does."""

from __future__ import annotations

import asyncio
import base64
from typing import Any

import aiohttp
import pytest
from lifecycle_support import NS, Env, phase_is

from avatar_sdk import api, assignment, pools

POOLS = pools.POOL_PLURAL


def pool_manifest(name: str, replicas: int = 2, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": api.API_VERSION,
        "kind": pools.POOL_KIND,
        "metadata": {"name": name, "namespace": NS},
        "spec": {
            "replicas": replicas,
            "template": {"resources": {"vramMiB": 4096}, "video": {"width": 256, "height": 256}},
            **spec,
        },
    }


def pooled(name: str, pool: str = "warm", **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": api.API_VERSION,
        "kind": api.KIND,
        "metadata": {"name": name, "namespace": NS},
        "spec": {"roomId": f"room-{name}", "poolRef": {"name": pool}, **spec},
    }


def workers(env: Env, pool: str, state: str | None = None) -> list[dict[str, Any]]:
    found = []
    for pod in env.list("pods"):
        labels = pod["metadata"].get("labels") or {}
        if labels.get(pools.POOL_LABEL) != pool or pod["metadata"].get("deletionTimestamp"):
            continue
        if state is None or labels.get(pools.POOL_STATE_LABEL) == state:
            found.append(pod)
    return found


async def wait_workers(env: Env, pool: str, count: int, state: str | None = None) -> list[Any]:
    async with asyncio.timeout(10 * env.backend.slack):
        while True:
            found = workers(env, pool, state)
            if len(found) == count:
                return found
            await asyncio.sleep(0.02)


def pool_token(env: Env, worker: str) -> str:
    secret = env.get("secrets", worker)
    assert secret is not None, f"no Secret for worker {worker}"
    return base64.b64decode(secret["data"][assignment.POOL_TOKEN_KEY]).decode()


async def poll(
    env: Env, status_url: str, worker: str, *, wait: float = 5, token: str | None = None
) -> tuple[int, dict[str, Any]]:
    """One long-poll, as a warm worker makes it."""
    url = status_url + assignment.path_for(NS, worker)
    headers = {"Authorization": f"Bearer {token or pool_token(env, worker)}"}
    async with env.http.get(
        url, params={"timeoutSeconds": str(wait)}, headers=headers, ssl=env._relay_ssl
    ) as response:
        body = await response.json() if response.status == 200 else {}
        return response.status, body


async def make_ready(env: Env, status_url: str, pool: str, count: int) -> list[str]:
    """Every starting worker asks once (so it is ready); returns the ready ones' names."""
    for pod in await wait_workers(env, pool, count):
        await poll(env, status_url, pod["metadata"]["name"], wait=0)
    return [p["metadata"]["name"] for p in await wait_workers(env, pool, count, "ready")]


async def pool_status(env: Env, name: str, **expected: int) -> dict[str, Any]:
    def matches(body: dict[str, Any]) -> bool:
        status = body.get("status") or {}
        return all(status.get(k, 0) == v for k, v in expected.items())

    return (await env.wait_for(POOLS, name, matches)).get("status") or {}


@pytest.mark.realcluster
async def test_a_session_claims_a_ready_worker_gets_its_assignment_and_the_pool_refills(
    env: Env,
) -> None:
    operator = await env.start_operator()
    url = operator.settings.status_url
    assert url is not None and url.startswith("https://")
    env.create(pool_manifest("warm", replicas=2))
    status = await pool_status(env, "warm", replicas=2, starting=2)
    assert status["selector"] == pools.idle_selector("warm")
    first = await wait_workers(env, "warm", 2, "starting")
    pod = first[0]
    assert pod["metadata"]["ownerReferences"][0]["kind"] == pools.POOL_KIND
    worker_env = {e["name"]: e.get("value") for e in pod["spec"]["containers"][0]["env"]}
    assert worker_env["AVATAR_POOL_NAME"] == "warm"
    assert worker_env["AVATAR_VIDEO_WIDTH"] == "256"
    assert "AVATAR_ROOM_ID" not in worker_env  # it has no session yet
    ready = await make_ready(env, url, "warm", 2)
    await pool_status(env, "warm", replicas=2, readyReplicas=2, starting=0)

    env.create(pooled("s1", agentParticipantId="agent-1"))
    session = await env.wait_session("s1", phase_is("Starting"))
    claimed = session["status"]["podName"]
    assert claimed in ready
    pod = env.get("pods", claimed)
    assert pod is not None
    labels = pod["metadata"]["labels"]
    assert labels[pools.POOL_STATE_LABEL] == "claimed"
    assert labels[f"{api.GROUP}/session-uid"] == session["metadata"]["uid"]
    owners = pod["metadata"]["ownerReferences"]
    assert [(o["kind"], o["name"]) for o in owners] == [(api.KIND, "s1")]
    assert session["status"]["placement"]["vramMiB"] == 4096

    code, given = await poll(env, url, claimed)
    assert code == 200
    secret = env.get("secrets", "s1-token")
    assert secret is not None
    assert given["joinToken"] == base64.b64decode(secret["data"]["token"]).decode()
    assert given["statusToken"] == env.status_token("s1")
    assert (given["roomId"], given["sessionName"], given["agentParticipantId"]) == (
        "room-s1",
        "s1",
        "agent-1",
    )
    assert given["participantId"] == session["status"]["participantId"]
    # the worker reports as the session's, with the credential it was given
    report = await env.report(operator, "s1", {"phase": "Joined"}, token=given["statusToken"])
    assert report.status == 200
    await env.wait_session("s1", phase_is("Joined"))
    claimed_events = await env.wait_events("Claimed", 1)
    assert claimed in claimed_events[0]["message"]

    # refilled: two idle again (the other ready one, a new one starting), one claimed
    await pool_status(env, "warm", replicas=2, readyReplicas=1, starting=1, claimed=1)
    assert len(workers(env, "warm")) == 3

    env.delete(api.PLURAL, "s1")
    await env.wait_gone("pods", claimed)
    await pool_status(env, "warm", claimed=0)


async def test_no_ready_worker_starts_cold_and_says_so(env: Env) -> None:
    await env.start_operator()
    env.create(pool_manifest("warm", replicas=1))
    await wait_workers(env, "warm", 1, "starting")  # starting, never asked: not ready
    env.create(pooled("c1"))
    session = await env.wait_session("c1", phase_is("Starting"))
    assert session["status"]["podName"] == "c1-worker"
    pod = await env.wait_for("pods", "c1-worker")
    worker_env = {e["name"]: e.get("value") for e in pod["spec"]["containers"][0]["env"]}
    assert worker_env["AVATAR_VIDEO_WIDTH"] == "256"  # the cold worker has the pool's template
    events = await env.wait_events("ColdStart", 1)
    assert "no ready worker in AvatarPool warm" in events[0]["message"]


async def test_a_session_whose_settings_differ_from_the_pool_starts_cold(env: Env) -> None:
    operator = await env.start_operator()
    assert operator.settings.status_url is not None
    env.create(pool_manifest("warm", replicas=1))
    await make_ready(env, operator.settings.status_url, "warm", 1)
    env.create(pooled("d1", video={"width": 640, "height": 480}))
    session = await env.wait_session("d1", phase_is("Starting"))
    assert session["status"]["podName"] == "d1-worker"
    events = await env.wait_events("ColdStart", 1)
    assert "spec.video differ from AvatarPool warm" in events[0]["message"]
    assert len(workers(env, "warm", "ready")) == 1  # untouched


async def test_a_pool_that_does_not_exist_starts_cold(env: Env) -> None:
    await env.start_operator()
    env.create(pooled("n1", pool="nope"))
    await env.wait_session("n1", phase_is("Starting"))
    events = await env.wait_events("ColdStart", 1)
    assert 'AvatarPool "nope" does not exist' in events[0]["message"]


async def test_when_empty_wait_keeps_the_session_pending_until_a_worker_is_ready(
    env: Env,
) -> None:
    operator = await env.start_operator()
    url = operator.settings.status_url
    assert url is not None
    env.create(pool_manifest("slow", replicas=1, whenEmpty="Wait"))
    (pod,) = await wait_workers(env, "slow", 1, "starting")
    env.create(pooled("w1", pool="slow"))
    session = await env.wait_session("w1", phase_is("Pending"))
    assert "waiting for a ready worker of AvatarPool slow" in session["status"]["message"]
    await poll(env, url, pod["metadata"]["name"], wait=0)  # ready now
    session = await env.wait_session("w1", phase_is("Starting"))
    assert session["status"]["podName"] == pod["metadata"]["name"]


async def test_concurrent_sessions_never_share_a_worker(env: Env) -> None:
    operator = await env.start_operator()
    url = operator.settings.status_url
    assert url is not None
    env.create(pool_manifest("warm", replicas=3))
    await make_ready(env, url, "warm", 3)
    for index in range(8):
        env.create(pooled(f"r{index}"))
    bodies = [await env.wait_session(f"r{i}", phase_is("Starting")) for i in range(8)]
    pod_names = [b["status"]["podName"] for b in bodies]
    assert len(set(pod_names)) == 8  # no Pod serves two sessions
    warm = [n for n in pod_names if not n.endswith("-worker")]
    assert len(warm) == 3
    for name in warm:
        pod = env.get("pods", name)
        assert pod is not None
        assert len(pod["metadata"]["ownerReferences"]) == 1


async def test_scale_subresource_and_scale_down_prefers_starting_workers(env: Env) -> None:
    operator = await env.start_operator()
    url = operator.settings.status_url
    assert url is not None
    env.create(pool_manifest("warm", replicas=2))
    ready = await make_ready(env, url, "warm", 2)
    env.local.store.mutate(
        env.local.store.lookup(api.GROUP, api.VERSION, POOLS),
        NS,
        "warm",
        lambda o: o["spec"].update(replicas=4),
    )
    await wait_workers(env, "warm", 4)
    await pool_status(env, "warm", replicas=4)
    env.local.store.mutate(
        env.local.store.lookup(api.GROUP, api.VERSION, POOLS),
        NS,
        "warm",
        lambda o: o["spec"].update(replicas=2),
    )
    left = await wait_workers(env, "warm", 2)
    assert sorted(p["metadata"]["name"] for p in left) == sorted(ready)  # starting ones went


async def test_the_pool_credential_reads_only_its_own_assignment(env: Env) -> None:
    operator = await env.start_operator()
    url = operator.settings.status_url
    assert url is not None
    env.create(pool_manifest("warm", replicas=2))
    one, two = (p["metadata"]["name"] for p in await wait_workers(env, "warm", 2))
    code, _ = await poll(env, url, one, wait=0, token=pool_token(env, two))
    assert code == 401
    code, _ = await poll(env, url, "nobody", wait=0, token=pool_token(env, two))
    assert code == 401
    code, _ = await poll(env, url, one, wait=0)
    assert code == 204
    # the plain HTTP port (probes, metrics) never serves an assignment
    plain = f"http://127.0.0.1:{operator.settings.http_port}"
    headers = {"Authorization": f"Bearer {pool_token(env, one)}"}
    path = plain + assignment.path_for(NS, one)
    async with aiohttp.ClientSession() as http, http.get(path, headers=headers) as response:
        assert response.status == 404


async def test_an_operator_restarted_after_a_claim_hands_the_worker_its_assignment(
    env: Env,
) -> None:
    operator = await env.start_operator()
    url = operator.settings.status_url
    assert url is not None
    env.create(pool_manifest("warm", replicas=1))
    (name,) = await make_ready(env, url, "warm", 1)
    env.create(pooled("f1"))
    await env.wait_session("f1", phase_is("Starting"))
    await env.stop_operator(operator)

    again = await env.start_operator()
    assert again.settings.status_url is not None
    code, given = await poll(env, again.settings.status_url, name)
    assert code == 200 and given["sessionName"] == "f1"
    await pool_status(env, "warm", replicas=1, claimed=1)
    assert len(workers(env, "warm")) == 2  # the claimed one and its replacement, no more


async def test_deleting_the_pool_removes_its_idle_workers_but_not_a_claimed_one(env: Env) -> None:
    operator = await env.start_operator()
    url = operator.settings.status_url
    assert url is not None
    env.create(pool_manifest("warm", replicas=2))
    await make_ready(env, url, "warm", 2)
    env.create(pooled("k1"))
    session = await env.wait_session("k1", phase_is("Starting"))
    env.delete(POOLS, "warm")
    async with asyncio.timeout(10):
        while [
            p for p in workers(env, "warm") if p["metadata"]["name"] != session["status"]["podName"]
        ]:
            await asyncio.sleep(0.05)
    assert env.get("pods", session["status"]["podName"]) is not None
    # and no GPU is held for the workers that went
    reconciler = env.operators[0].operator.reconciler  # type: ignore[union-attr]
    keys = [r.key for r in reconciler.placement.ledger]
    assert keys == [f"{NS}/k1"]
