"""A session's whole life through the real operator: Starting → Joined → Ended → deleted."""

from __future__ import annotations

import base64
from typing import Any

import jwt
import pytest
from lifecycle_support import NS, Env, Refused, phase_is

from avatar_operator import manifests
from avatar_sdk import api


@pytest.mark.realcluster
async def test_happy_path_to_joined_and_ended(env: Env, manifest: Any) -> None:
    operator = await env.start_operator()
    env.create(manifest("s1", lifetime={"ttlSecondsAfterFinished": 0}))

    session = await env.wait_session("s1", phase_is("Starting"))
    status = session["status"]
    assert status["placement"]["node"] in env.backend.nodes
    assert status["podName"] == "s1-worker" and status["secretName"] == "s1-token"
    conditions = {c["type"]: c["status"] for c in status["conditions"]}
    assert conditions["Scheduled"] == "True" and conditions["TokenIssued"] == "True"

    pod = await env.wait_for("pods", "s1-worker")
    assert pod["metadata"]["ownerReferences"][0]["name"] == "s1"
    secret = env.get("secrets", "s1-token")
    assert secret is not None and secret["metadata"]["ownerReferences"][0]["kind"] == api.KIND
    token = base64.b64decode(secret["data"]["token"]).decode()
    claims = jwt.decode(token, options={"verify_signature": False})
    assert claims["roomId"] == "room-s1" and claims["participantId"] == status["participantId"]
    assert token not in str(session)  # never in the status

    response = await env.report(operator, "s1", {"phase": "Joined"})
    assert response.status == 200
    session = await env.wait_session("s1", phase_is("Joined"))
    conditions = {c["type"]: c["status"] for c in session["status"]["conditions"]}
    assert conditions["Joined"] == "True" and conditions["PodReady"] == "True"
    assert session["status"]["joinedAt"]

    await env.report(
        operator, "s1", {"playback": {"state": "Speaking", "segments": 1, "position": 0.5}}
    )
    session = await env.wait_session(
        "s1", lambda o: (o["status"].get("playback") or {}).get("state") == "Speaking"
    )
    assert {c["type"]: c["status"] for c in session["status"]["conditions"]}["Speaking"] == "True"

    await env.report(operator, "s1", {"phase": "Ended", "endReason": "RoomEnded"})
    await env.wait_gone("pods", "s1-worker")
    await env.wait_gone("secrets", "s1-token")
    await env.wait_gone(api.PLURAL, "s1")  # ttlSecondsAfterFinished: 0
    assert not operator.reconciler.placement.ledger.get(f"{NS}/s1")


@pytest.mark.realcluster
async def test_a_spec_the_crd_refuses_never_reaches_the_operator(env: Env, manifest: Any) -> None:
    """The CRD's CEL rule refuses it at the API server (the emulator evaluates it too); that the
    operator refuses it where a CRD lacks the rule is `test_operator_robustness`'s."""
    await env.start_operator()
    with pytest.raises(Refused) as refused:
        env.create(manifest("bad", resources={"gpu": "none", "vramMiB": 1024}))
    assert refused.value.code == 422
    assert "spec.resources" in refused.value.message
    assert "vramMiB must be empty when gpu is none" in refused.value.message
    assert env.get(api.PLURAL, "bad") is None
    assert env.get("pods", manifests.pod_name("bad")) is None
