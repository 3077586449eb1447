"""The chart's RBAC against the calls the real operator makes: every request the operator sent
the API server during a whole life — Lease election, start-up rebuild, sessions created by hand
and through the dispatcher, placement, workers' reports, endings, collection, deletion — must
be allowed by the Roles and ClusterRoles the chart binds to its ServiceAccount. A call the
chart forgot fails here, not on a user's cluster as a 403."""

from __future__ import annotations

import base64
import time
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import jwt
import pytest
import yaml
from lifecycle_support import NS, OPERATOR_NS, Env, free_port, phase_is

from avatar_sdk import api

helm_python = pytest.importorskip("helm_python")

CHART = Path(__file__).resolve().parents[3] / "charts" / "avatar-operator"
RELEASE = (
    "avatar-operator"  # the chart names the Lease after the release, as the operator's default
)

Call = tuple[str, str, str, str | None, str | None]  # group, resource, verb, namespace, name


def call_of(method: str, path_qs: str) -> Call | None:
    """What RBAC sees in a request: (apiGroup, resource, verb, namespace, name); None for the
    discovery paths every authenticated client may read."""
    url = urlsplit(path_qs)
    parts = [p for p in url.path.split("/") if p]
    if not parts or parts[0] not in ("api", "apis"):
        return None
    if parts[0] == "api":
        group, rest = "", parts[2:]
    else:
        if len(parts) < 3:
            return None
        group, rest = parts[1], parts[3:]
    if not rest:
        return None  # discovery of a group version
    namespace = None
    if rest[0] == "namespaces" and len(rest) >= 3:
        namespace, rest = rest[1], rest[2:]
    resource = rest[0]
    name = rest[1] if len(rest) > 1 else None
    if len(rest) > 2:
        resource = f"{resource}/{rest[2]}"
    watch = parse_qs(url.query).get("watch", [""])[0] in ("true", "1")
    verb = {
        "GET": "get" if name else ("watch" if watch else "list"),
        "POST": "create",
        "PUT": "update",
        "PATCH": "patch",
        "DELETE": "delete" if name else "deletecollection",
    }[method]
    return group, resource, verb, namespace, name


def allowed(call: Call, objects: list[dict[str, Any]], account: tuple[str, str]) -> bool:
    group, resource, verb, namespace, name = call
    roles = {(o["kind"], o["metadata"].get("namespace"), o["metadata"]["name"]): o for o in objects}
    for binding in objects:
        if binding["kind"] not in ("RoleBinding", "ClusterRoleBinding"):
            continue
        subjects = {(s["namespace"], s["name"]) for s in binding["subjects"]}
        if account not in subjects:
            continue
        bound_ns = binding["metadata"].get("namespace")  # None for a ClusterRoleBinding
        if bound_ns is not None and bound_ns != namespace:
            continue
        ref = binding["roleRef"]
        role = roles.get((ref["kind"], bound_ns if ref["kind"] == "Role" else None, ref["name"]))
        assert role is not None, f"{binding['metadata']['name']} binds a role the chart lacks"
        for rule in role["rules"]:
            names = rule.get("resourceNames")
            if (
                group in rule["apiGroups"]
                and resource in rule["resources"]
                and verb in rule["verbs"]
                and (not names or name in names)
            ):
                return True
    return False


def render_chart(values: dict[str, Any]) -> list[dict[str, Any]]:
    chart = helm_python.Chart.load(str(CHART))
    out = chart.render(values, name=RELEASE, namespace=OPERATOR_NS, is_install=True)
    return [
        doc
        for path, text in out.items()
        if path.endswith(".yaml")
        for doc in yaml.safe_load_all(text)
        if doc
    ]


@pytest.mark.parametrize("watched", [[], [NS]], ids=["cluster-wide", "one-namespace"])
async def test_every_call_of_the_operator_is_granted_by_the_chart(
    env: Env, tmp_path: Path, watched: list[str]
) -> None:
    calls: list[tuple[str, str]] = []
    env.local.server.on_request = lambda method, path: calls.append((method, path))
    bearer = "d" * 40
    (tmp_path / "dispatcher-token").write_text(bearer)
    port = free_port()
    operator = await env.start_operator(
        leader_election=True,
        lease_name=RELEASE,
        lease_duration_seconds=4,
        lease_renew_seconds=1,
        dispatcher_port=port,
        dispatcher_token_file=str(tmp_path / "dispatcher-token"),
        dispatcher_namespace=NS,
        namespaces=watched,
    )

    # a session by hand: placed, started, joined, speaking, ended, collected, deleted
    env.create(
        {
            "apiVersion": api.API_VERSION,
            "kind": api.KIND,
            "metadata": {"name": "by-hand", "namespace": NS},
            "spec": {"roomId": "room-rbac", "lifetime": {"ttlSecondsAfterFinished": 0}},
        }
    )
    await env.wait_session("by-hand", phase_is("Starting"), within=20)
    await env.report(operator, "by-hand", {"phase": "Joined"})
    await env.report(operator, "by-hand", {"playback": {"state": "Speaking", "segments": 1}})
    # a session through the dispatcher, with the caller's token
    now = int(time.time())
    token = jwt.encode(
        {"participantId": "avatar_rbac", "exp": now + 600, "permissions": ["allow_join"]},
        "k" * 32,
        algorithm="HS256",
    )
    body = {"room_name": "room-launched", "token": token, "participant_id": "avatar_rbac"}
    async with env.http.post(
        f"http://127.0.0.1:{port}/launch", json=body, headers={"Authorization": f"Bearer {bearer}"}
    ) as response:
        assert response.status == 201, await response.text()
        launched = (await response.json())["session"]
    await env.wait_session(launched, phase_is("Starting"))
    # a session with its own credentials Secret in its namespace (read there)
    env.create(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "team-videosdk", "namespace": NS},
            "data": {
                "apiKey": base64.b64encode(b"team-key").decode(),
                "secret": base64.b64encode(b"t" * 40).decode(),
            },
        }
    )
    env.create(
        {
            "apiVersion": api.API_VERSION,
            "kind": api.KIND,
            "metadata": {"name": "own-key", "namespace": NS},
            "spec": {"roomId": "room-own", "credentials": {"secretRef": {"name": "team-videosdk"}}},
        }
    )
    await env.wait_session("own-key", phase_is("Starting"))
    for name in ("by-hand", launched, "own-key"):
        await env.report(operator, name, {"phase": "Ended", "endReason": "RoomEnded"})
    await env.wait_gone(api.PLURAL, "by-hand")
    await env.wait_gone("secrets", f"{launched}-caller-token")
    await env.stop_operator(operator)  # releases the Lease

    observed = {c for c in (call_of(m, p) for m, p in calls) if c is not None}
    # the test's own writes through the in-process store do not pass the API server; the test's
    # HTTP traffic goes to the operator (relay, dispatcher), never to the API server
    assert {c[2] for c in observed} >= {"get", "list", "watch", "create", "delete", "patch"}
    values = {"dispatcher": {"enabled": True, "namespace": NS}, "watchNamespaces": watched}
    objects = render_chart(values)
    refused = [c for c in observed if not allowed(c, objects, (OPERATOR_NS, RELEASE))]
    assert not refused, f"calls the chart does not grant: {sorted(refused, key=str)}"


@pytest.mark.parametrize(
    ("method", "path", "call"),
    [
        ("GET", "/api/v1/nodes?watch=true&timeoutSeconds=300", ("", "nodes", "watch", None, None)),
        ("GET", "/api/v1/nodes", ("", "nodes", "list", None, None)),
        ("POST", "/api/v1/namespaces/a/pods", ("", "pods", "create", "a", None)),
        ("DELETE", "/api/v1/namespaces/a/secrets/s", ("", "secrets", "delete", "a", "s")),
        (
            "PATCH",
            "/apis/avatar-operator.dev/v1alpha1/namespaces/a/avatarsessions/x/status",
            ("avatar-operator.dev", "avatarsessions/status", "patch", "a", "x"),
        ),
        (
            "GET",
            "/apis/avatar-operator.dev/v1alpha1/avatarsessions?watch=1",
            ("avatar-operator.dev", "avatarsessions", "watch", None, None),
        ),
        (
            "PUT",
            "/apis/coordination.k8s.io/v1/namespaces/s/leases/l",
            ("coordination.k8s.io", "leases", "update", "s", "l"),
        ),
        ("GET", "/apis/avatar-operator.dev/v1alpha1", None),
        ("GET", "/api", None),
        ("GET", "/version", None),
    ],
)
def test_requests_are_read_as_rbac_reads_them(method: str, path: str, call: Call | None) -> None:
    assert call_of(method, path) == call
