"""Watching sessions, and where the client finds its configuration."""

from __future__ import annotations

import asyncio
import contextlib
import copy
from pathlib import Path
from typing import Any

import certifi
import pytest
from client_support import NS, session_manifest, set_status

from avatar_devtools.localcluster import cluster
from avatar_sdk import api
from avatar_sdk import client as avatar_client


async def collect(events: Any, count: int) -> list[tuple[str, str, str | None]]:
    found = []
    async with contextlib.aclosing(events) as stream:
        async for event in stream:
            found.append((event.type, event.name, event.session.status.phase))
            if len(found) == count:
                break
    return found


async def test_watch_lists_then_follows_changes_and_deletions(
    sessions: avatar_client.AvatarSessionClient, cluster_with_crd: cluster.LocalCluster
) -> None:
    a = await sessions.create("room-a")

    async def changes() -> None:
        await cluster_with_crd.server.wait_for_watches(f"{api.PLURAL}.{api.GROUP}")
        b = await sessions.create("room-b")
        set_status(cluster_with_crd, a.name, {"phase": "Joined"})
        cluster_with_crd.server.drop_watches()  # resumed without losing or repeating events
        await sessions.delete(b.name)

    task = asyncio.create_task(changes())
    found = await asyncio.wait_for(collect(sessions.watch(), 4), 10)
    await task
    b_name = api.session_name_for_room("room-b")
    assert found == [
        ("ADDED", a.name, None),
        ("ADDED", b_name, None),
        ("MODIFIED", a.name, api.Phase.JOINED),
        ("DELETED", b_name, None),
    ]


async def test_watch_of_one_name_and_of_all_namespaces(
    sessions: avatar_client.AvatarSessionClient, cluster_with_crd: cluster.LocalCluster
) -> None:
    one = await sessions.create("room-c")
    await sessions.create("room-d")
    cluster_with_crd.apply(session_manifest("elsewhere", "room-e", namespace="default"))
    assert await asyncio.wait_for(collect(sessions.watch(one.name), 1), 5) == [
        ("ADDED", one.name, None)
    ]
    everywhere = await asyncio.wait_for(collect(sessions.watch(all_namespaces=True), 3), 5)
    assert {name for _, name, _ in everywhere} == {
        one.name,
        api.session_name_for_room("room-d"),
        "elsewhere",
    }


async def test_a_hand_made_session_with_an_odd_spec_is_still_readable(
    sessions: avatar_client.AvatarSessionClient,
    cluster_with_crd: cluster.LocalCluster,
    avatarsession_crd: dict[str, Any],
) -> None:
    # gpu none with vramMiB: the CRD's CEL rule refuses it, a hand-made CRD without the rule
    # lets it through
    hand_made = copy.deepcopy(avatarsession_crd)
    spec = hand_made["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    del spec["properties"]["resources"]["x-kubernetes-validations"]
    cluster_with_crd.apply(hand_made)
    cluster_with_crd.apply(
        session_manifest("odd", "room-f", resources={"gpu": "none", "vramMiB": 1024})
    )
    set_status(cluster_with_crd, "odd", {"phase": "Failed", "endReason": "InvalidSpec"})
    session = await sessions.get("odd")
    assert session.spec.room_id == "room-f"
    assert session.status.end_reason is api.EndReason.INVALID_SPEC
    with pytest.raises(avatar_client.SessionFailed, match="InvalidSpec"):
        await sessions.wait_until_joined("odd", timeout=2)


async def test_the_kubeconfig_context_names_the_namespace(
    kubeconfig: Path, cluster_with_crd: cluster.LocalCluster
) -> None:
    async with await avatar_client.AvatarSessionClient.from_config(kubeconfig=kubeconfig) as c:
        assert c.namespace == NS
    async with await avatar_client.AvatarSessionClient.from_config(
        "default", kubeconfig=kubeconfig, context="localcluster"
    ) as c:
        assert c.namespace == "default"
        assert (await c.create("room-g")).namespace == "default"


@pytest.fixture
def service_account(tmp_path: Path) -> Path:
    account = tmp_path / "serviceaccount"
    account.mkdir()
    (account / "token").write_text("a-token")
    (account / "ca.crt").write_text(Path(certifi.where()).read_text())  # any valid PEM
    (account / "namespace").write_text("voice-agents\n")
    return account


async def test_in_cluster_config_uses_the_service_account(
    service_account: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(avatar_client, "SERVICE_ACCOUNT_DIR", service_account)
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.0.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "443")
    api_client, namespace = await avatar_client.load_api_client()
    try:
        assert namespace == "voice-agents"
        assert api_client.configuration.host == "https://10.0.0.1:443"
    finally:
        await api_client.close()


async def test_without_any_configuration_the_error_says_what_to_set(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(avatar_client, "SERVICE_ACCOUNT_DIR", tmp_path / "none")
    monkeypatch.delenv("KUBECONFIG", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(avatar_client.ApiUnavailable, match="set KUBECONFIG"):
        await avatar_client.load_api_client()
    with pytest.raises(avatar_client.ApiUnavailable, match="missing: the file does not exist"):
        await avatar_client.load_api_client(tmp_path / "missing")


async def test_an_unknown_context_is_named(kubeconfig: Path) -> None:
    with pytest.raises(avatar_client.ApiUnavailable, match="has no context 'prod'"):
        await avatar_client.load_api_client(kubeconfig, context="prod")


async def test_an_unreachable_api_server_is_reported(tmp_path: Path) -> None:
    from avatar_devtools.localcluster import kubeconfig as kc

    path = kc.write(tmp_path / "dead", "http://127.0.0.1:9", namespace=NS)
    async with await avatar_client.AvatarSessionClient.from_config(kubeconfig=path) as c:
        with pytest.raises(avatar_client.ApiUnavailable, match="cannot reach the Kubernetes API"):
            await c.create("room")
