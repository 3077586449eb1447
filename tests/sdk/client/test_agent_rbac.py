"""The agent's RBAC (examples/agent-rbac.yaml, quoted in the README) is valid and is exactly what
the client uses and what its Forbidden errors tell users to grant."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from avatar_sdk import api
from avatar_sdk import client as avatar_client


@pytest.fixture(scope="module")
def rbac(repo_root: Path) -> list[dict[str, Any]]:
    text = (repo_root / "examples" / "agent-rbac.yaml").read_text(encoding="utf-8")
    return [doc for doc in yaml.safe_load_all(text) if doc]


@pytest.mark.parametrize("version", ["1.25", "1.37"])
def test_the_agent_rbac_validates(rbac: list[dict[str, Any]], version: str) -> None:
    for obj in rbac:
        kubernetes_validate.validate(obj, version, strict=True)


def test_the_role_grants_the_clients_verbs_on_sessions_and_nothing_cluster_wide(
    rbac: list[dict[str, Any]],
) -> None:
    kinds = [obj["kind"] for obj in rbac]
    assert kinds == ["ServiceAccount", "Role", "RoleBinding"]  # no ClusterRole
    role = rbac[1]
    sessions, events = role["rules"]
    assert sessions == {
        "apiGroups": [api.GROUP],
        "resources": [api.PLURAL],
        "verbs": list(avatar_client.SESSION_VERBS),
    }
    assert events == {"apiGroups": [""], "resources": ["events"], "verbs": ["list"]}
    binding = rbac[2]
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"][0]["name"] == rbac[0]["metadata"]["name"]


def test_the_forbidden_message_quotes_the_same_rule(rbac: list[dict[str, Any]]) -> None:
    denied = avatar_client.permission_denied("create", avatar_client.RESOURCE, "agents", "no")
    quoted = yaml.safe_load(str(denied).split("RoleBinding):\n", 1)[1])
    assert quoted == [rbac[1]["rules"][0]]
