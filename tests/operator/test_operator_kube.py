"""The operator's API access against the emulated API: errors are errors, not answers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from avatar_operator import kube


@pytest.fixture
async def api(localcluster: Any, tmp_path: Path) -> Any:
    config = localcluster.write_kubeconfig(tmp_path / "kubeconfig")
    client = kube.Kube(await kube.load_api_client(str(config)))
    yield client
    await client.aclose()


def secret(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": "default"},
        "data": {},
    }


async def test_missing_objects_raise_not_found(api: kube.Kube) -> None:
    with pytest.raises(kube.NotFound, match="absent"):
        await api.read_secret("default", "absent")
    with pytest.raises(kube.NotFound):
        await api.read_lease("default", "absent")
    assert await api.delete("Secret", "default", "absent") is False


async def test_create_twice_is_a_conflict_and_ensure_is_idempotent(api: kube.Kube) -> None:
    assert await api.ensure(secret("s1")) is True
    assert await api.ensure(secret("s1")) is False
    with pytest.raises(kube.Conflict, match="already exists"):
        await api.create(secret("s1"))
    assert await api.delete("Secret", "default", "s1") is True


async def test_stale_lease_replace_is_a_conflict(api: kube.Kube) -> None:
    body = {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {"name": "l", "namespace": "default"},
        "spec": {"holderIdentity": "a"},
    }
    created = await api.create_lease("default", body)
    await api.replace_lease("default", "l", {**created, "spec": {"holderIdentity": "b"}})
    with pytest.raises(kube.Conflict):
        await api.replace_lease("default", "l", {**created, "spec": {"holderIdentity": "c"}})


async def test_an_invalid_object_names_the_field(api: kube.Kube) -> None:
    bad = secret("Not_A_Name")
    with pytest.raises(kube.Invalid, match="Not_A_Name"):
        await api.create(bad)


async def _flaky_server(answers: list[tuple[int, dict[str, str]]]) -> tuple[Any, str, list[float]]:
    """An API server that answers each request with the next (status, headers) of `answers`,
    then 200 with an empty list; returns (runner, url, the times requests came)."""
    import time

    from aiohttp import web

    seen: list[float] = []

    async def handle(request: web.Request) -> web.Response:
        seen.append(time.monotonic())
        if answers:
            status, headers = answers.pop(0)
            body = {"kind": "Status", "code": status, "message": "storage is (re)initializing"}
            return web.json_response(body, status=status, headers=headers)
        return web.json_response({"kind": "SecretList", "items": []})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, f"http://127.0.0.1:{port}", seen


def _client_for(url: str) -> kube.Kube:
    from kubernetes_asyncio import client

    configuration = client.Configuration(host=url)
    return kube.Kube(client.ApiClient(configuration))


async def test_a_429_is_retried_after_the_wait_the_server_asks() -> None:
    """kube-apiserver answers 429 "storage is (re)initializing" for a resource whose CRD was
    just Established: the operator waits as asked and goes on, as client-go does."""
    runner, url, seen = await _flaky_server([(429, {"Retry-After": "0.2"}), (429, {})])
    api = _client_for(url)
    try:
        assert await api._request("GET", "/api/v1/namespaces/default/secrets") == {
            "kind": "SecretList",
            "items": [],
        }
    finally:
        await api.aclose()
        await runner.cleanup()
    assert len(seen) == 3
    assert seen[1] - seen[0] >= 0.19  # Retry-After: 0.2
    assert seen[2] - seen[1] >= 0.99  # no Retry-After: 1 s


async def test_a_plain_500_is_not_retried_and_says_what_failed() -> None:
    runner, url, seen = await _flaky_server([(500, {})])
    api = _client_for(url)
    try:
        with pytest.raises(kube.KubeError, match="500"):
            await api._request("GET", "/api/v1/namespaces/default/secrets")
    finally:
        await api.aclose()
        await runner.cleanup()
    assert len(seen) == 1
