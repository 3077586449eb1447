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
