"""The AvatarSession models: defaults, wire names, and every invalid spec named by its field."""

from __future__ import annotations

import copy
from datetime import UTC, datetime
from typing import Any

import jsonschema
import pytest

from avatar_sdk import api

BASE = {"roomId": "abcd-efgh-ijkl"}


def spec_with(**patch: Any) -> dict[str, Any]:
    """BASE with nested keys replaced: spec_with(video={"fps": 0})."""
    spec: dict[str, Any] = copy.deepcopy(BASE)
    for key, value in patch.items():
        if isinstance(value, dict) and isinstance(spec.get(key), dict):
            spec[key].update(value)
        else:
            spec[key] = value
    return spec


# (case id, spec, field the error must name, can the CRD's OpenAPI schema say it?)
# Cross-field rules (schema=False) are CEL rules in the CRD, which jsonschema does not run.
INVALID_SPECS: list[tuple[str, dict[str, Any], str, bool]] = [
    ("missing roomId", {}, "spec.roomId", True),
    ("empty roomId", {"roomId": ""}, "spec.roomId", True),
    ("roomId with a space", {"roomId": "my room"}, "spec.roomId", True),
    ("roomId with a slash", {"roomId": "a/b"}, "spec.roomId", True),
    ("roomId starting with a dash", {"roomId": "-abc"}, "spec.roomId", True),
    ("roomId too long", {"roomId": "a" * 129}, "spec.roomId", True),
    ("roomId not a string", {"roomId": 42}, "spec.roomId", True),
    ("participantId with unicode", spec_with(participantId="avatär"), "spec.participantId", True),
    (
        "agent equals avatar",
        spec_with(participantId="p1", agentParticipantId="p1"),
        "spec.agentParticipantId",
        False,
    ),
    ("negative VRAM", spec_with(resources={"vramMiB": -1}), "spec.resources.vramMiB", True),
    ("tiny VRAM", spec_with(resources={"vramMiB": 10}), "spec.resources.vramMiB", True),
    ("absurd VRAM", spec_with(resources={"vramMiB": 10**7}), "spec.resources.vramMiB", True),
    ("VRAM as text", spec_with(resources={"vramMiB": "lots"}), "spec.resources.vramMiB", True),
    ("unknown gpu mode", spec_with(resources={"gpu": "mig"}), "spec.resources.gpu", True),
    (
        "VRAM without a GPU",
        spec_with(resources={"gpu": "none", "vramMiB": 1024}),
        "spec.resources.vramMiB",
        False,
    ),
    ("cpu not a quantity", spec_with(resources={"cpu": "two"}), "spec.resources.cpu", True),
    ("memory negative", spec_with(resources={"memory": "-1Gi"}), "spec.resources.memory", True),
    ("fps 0", spec_with(video={"fps": 0}), "spec.video.fps", True),
    ("fps 1000", spec_with(video={"fps": 1000}), "spec.video.fps", True),
    ("fps fractional", spec_with(video={"fps": 29.97}), "spec.video.fps", True),
    ("odd width", spec_with(video={"width": 513}), "spec.video.width", True),
    ("odd height", spec_with(video={"height": 511}), "spec.video.height", True),
    ("huge width", spec_with(video={"width": 7680}), "spec.video.width", True),
    ("tiny height", spec_with(video={"height": 16}), "spec.video.height", True),
    (
        "too many pixels",
        spec_with(video={"width": 1920, "height": 1920}),
        "spec.video.height",
        False,
    ),
    ("sample rate 44000", spec_with(audio={"sampleRate": 44_000}), "spec.audio.sampleRate", True),
    ("sample rate 8 kHz", spec_with(audio={"sampleRate": 8_000}), "spec.audio.sampleRate", True),
    ("3 channels", spec_with(audio={"channels": 3}), "spec.audio.channels", True),
    ("0 channels", spec_with(audio={"channels": 0}), "spec.audio.channels", True),
    ("unknown renderer", spec_with(avatar={"renderer": "3d"}), "spec.avatar.renderer", True),
    (
        "model without a path",
        spec_with(avatar={"renderer": "model"}),
        "spec.avatar.modelPath",
        False,
    ),
    ("relative image", spec_with(avatar={"image": "face.png"}), "spec.avatar.image", True),
    (
        "image escaping its volume",
        spec_with(avatar={"image": "/var/lib/avatar/../../etc/shadow"}),
        "spec.avatar.image",
        True,
    ),
    (
        "volume with two sources",
        spec_with(avatar={"volume": {"configMap": "a", "persistentVolumeClaim": "b"}}),
        "spec.avatar.volume.persistentVolumeClaim",
        False,
    ),
    (
        "volume with a bad claim name",
        spec_with(avatar={"volume": {"persistentVolumeClaim": "My_Claim"}}),
        "spec.avatar.volume.persistentVolumeClaim",
        True,
    ),
    (
        "negative join timeout",
        spec_with(lifetime={"joinTimeoutSeconds": -5}),
        "spec.lifetime.joinTimeoutSeconds",
        True,
    ),
    (
        "negative idle timeout",
        spec_with(lifetime={"idleTimeoutSeconds": -1}),
        "spec.lifetime.idleTimeoutSeconds",
        True,
    ),
    (
        "max duration of a year",
        spec_with(lifetime={"maxDurationSeconds": 365 * 86_400}),
        "spec.lifetime.maxDurationSeconds",
        True,
    ),
    (
        "negative ttl after finished",
        spec_with(lifetime={"ttlSecondsAfterFinished": -1}),
        "spec.lifetime.ttlSecondsAfterFinished",
        True,
    ),
    (
        "token TTL of 10 s",
        spec_with(credentials={"tokenTtlSeconds": 10}),
        "spec.credentials.tokenTtlSeconds",
        True,
    ),
    (
        "token TTL of a week",
        spec_with(credentials={"tokenTtlSeconds": 7 * 86_400}),
        "spec.credentials.tokenTtlSeconds",
        True,
    ),
    (
        "secretRef without a name",
        spec_with(credentials={"secretRef": {}}),
        "spec.credentials.secretRef.name",
        True,
    ),
    (
        "secretRef with an uppercase name",
        spec_with(credentials={"secretRef": {"name": "VideoSDK"}}),
        "spec.credentials.secretRef.name",
        True,
    ),
    (
        "bad toleration operator",
        spec_with(tolerations=[{"key": "gpu", "operator": "In"}]),
        "spec.tolerations[0].operator",
        True,
    ),
    (
        "video as a string",
        spec_with(video="1080p"),
        "spec.video",
        True,
    ),
    (
        "two token sources",
        spec_with(credentials={"secretRef": {"name": "k"}, "tokenSecretRef": {"name": "t"}}),
        "spec.credentials.tokenSecretRef",
        False,
    ),
    (
        "token secret with a bad name",
        spec_with(credentials={"tokenSecretRef": {"name": "My_Token"}}),
        "spec.credentials.tokenSecretRef.name",
        True,
    ),
    (
        "signaling URL with a scheme",
        spec_with(signalingBaseUrl="https://api.videosdk.live"),
        "spec.signalingBaseUrl",
        True,
    ),
]

# Only the models know unknown fields: the API server prunes them silently instead.
MODEL_ONLY = [
    ("typo at the top", spec_with(roomID="x"), "spec.roomID"),
    ("typo in video", spec_with(video={"framerate": 30}), "spec.video.framerate"),
]


@pytest.mark.parametrize(
    ("spec", "field"),
    [pytest.param(spec, field, id=case) for case, spec, field, _ in INVALID_SPECS]
    + [pytest.param(spec, field, id=case) for case, spec, field in MODEL_ONLY],
)
def test_invalid_spec_is_refused_naming_the_field(spec: dict[str, Any], field: str) -> None:
    with pytest.raises(api.SpecError) as info:
        api.parse_spec(spec)
    assert field in info.value.fields, str(info.value)
    assert f"{field}:" in str(info.value)


@pytest.mark.parametrize(
    "spec",
    [pytest.param(spec, id=case) for case, spec, _, schema_says in INVALID_SPECS if schema_says],
)
def test_invalid_spec_is_refused_by_the_crd_schema(
    spec: dict[str, Any], schema_validator: jsonschema.Draft4Validator
) -> None:
    body = {"apiVersion": api.API_VERSION, "kind": api.KIND, "metadata": {}, "spec": spec}
    assert list(schema_validator.iter_errors(body)), "the CRD schema accepted it"


def test_there_are_at_least_twenty_invalid_cases() -> None:
    assert len(INVALID_SPECS) + len(MODEL_ONLY) >= 20


VALID_EDGES: list[tuple[str, dict[str, Any]]] = [
    ("smallest frame", spec_with(video={"width": 64, "height": 64, "fps": 1})),
    ("full HD at 60", spec_with(video={"width": 1920, "height": 1080, "fps": 60})),
    ("portrait HD", spec_with(video={"width": 1080, "height": 1920})),
    ("stereo 48 kHz", spec_with(audio={"sampleRate": 48_000, "channels": 2})),
    ("16 kHz", spec_with(audio={"sampleRate": 16_000})),
    ("least VRAM", spec_with(resources={"vramMiB": 512})),
    ("most VRAM", spec_with(resources={"vramMiB": 262_144})),
    ("exclusive", spec_with(resources={"gpu": "exclusive"})),
    ("CPU only", spec_with(resources={"gpu": "none"})),
    ("idle timeout off", spec_with(lifetime={"idleTimeoutSeconds": 0})),
    ("delete at once", spec_with(lifetime={"ttlSecondsAfterFinished": 0})),
    ("shortest token", spec_with(credentials={"tokenTtlSeconds": 60})),
    ("one-char room", {"roomId": "a"}),
    ("longest room", {"roomId": "a" * 128}),
    ("underscore room", {"roomId": "room_1-A"}),
    ("model renderer", spec_with(avatar={"renderer": "model", "modelPath": "/models/a.pt"})),
    ("dotted path", spec_with(avatar={"image": "/var/lib/avatar/.hidden/face.png"})),
    ("toleration of all", spec_with(tolerations=[{"operator": "Exists"}])),
    ("snake_case names", {"room_id": "abc", "agent_participant_id": "agent-1"}),
    ("caller's token", spec_with(credentials={"tokenSecretRef": {"name": "avs-caller-token"}})),
    ("signaling host and port", spec_with(signalingBaseUrl="signal.example.com:8443")),
]


@pytest.mark.parametrize("spec", [pytest.param(s, id=case) for case, s in VALID_EDGES])
def test_valid_edge_cases_are_accepted(
    spec: dict[str, Any], schema_validator: jsonschema.Draft4Validator
) -> None:
    parsed = api.parse_spec(spec)
    wire = parsed.to_wire()
    body = {"apiVersion": api.API_VERSION, "kind": api.KIND, "metadata": {}, "spec": wire}
    assert not list(schema_validator.iter_errors(body))
    assert api.parse_spec(wire) == parsed  # the wire form reads back the same


def test_defaults_are_the_documented_ones() -> None:
    spec = api.parse_spec(BASE)
    assert (spec.video.width, spec.video.height, spec.video.fps) == (512, 512, 30)
    assert (spec.audio.sample_rate, spec.audio.channels) == (24_000, 1)
    assert spec.resources.gpu is api.GpuMode.SHARED
    assert spec.resources.effective_vram_mib == api.DEFAULT_VRAM_MIB
    assert spec.avatar.renderer is api.Renderer.PORTRAIT
    assert spec.lifetime.join_timeout_seconds == 60
    assert spec.credentials.token_ttl_seconds == 3600


def test_wire_names_are_camel_case_and_attributes_snake_case() -> None:
    spec = api.parse_spec(
        spec_with(resources={"vramMiB": 4096}, lifetime={"ttlSecondsAfterFinished": 5})
    )
    assert spec.resources.vram_mib == 4096
    wire = spec.to_wire()
    assert wire["roomId"] == BASE["roomId"]
    assert wire["resources"]["vramMiB"] == 4096
    assert wire["lifetime"]["ttlSecondsAfterFinished"] == 5
    assert "room_id" not in wire


def test_no_gpu_reserves_no_vram() -> None:
    assert api.parse_spec(spec_with(resources={"gpu": "none"})).resources.effective_vram_mib == 0


def test_spec_that_is_not_an_object_is_refused() -> None:
    with pytest.raises(api.SpecError, match="spec: must be an object"):
        api.parse_spec(["roomId"])


def test_status_round_trips_and_tolerates_unknown_fields() -> None:
    at = datetime(2026, 11, 26, 4, 0, tzinfo=UTC)
    status = api.AvatarSessionStatus(
        phase=api.Phase.JOINED,
        placement=api.Placement(node="gpu-1", gpu=0, vram_mib=2048),
        playback=api.Playback(state=api.PlaybackState.SPEAKING, segments=3, position=1.5),
        joined_at=at,
        vram_used_mib=1800,
    )
    wire = status.to_wire()
    assert wire["joinedAt"] == "2026-11-26T04:00:00Z"
    assert wire["placement"] == {"node": "gpu-1", "gpu": 0, "vramMiB": 2048, "exclusive": False}
    assert wire["vramUsedMiB"] == 1800
    assert api.parse_status({**wire, "futureField": 1}) == status


def test_unreadable_status_fields_are_dropped_not_fatal() -> None:
    status = api.parse_status({"phase": "Joined", "placement": "nowhere", "podName": "p"})
    assert status.phase is api.Phase.JOINED
    assert status.placement is None
    assert status.pod_name == "p"
    assert api.parse_status(None) == api.AvatarSessionStatus()


def test_set_condition_moves_transition_time_only_on_change() -> None:
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    t1 = datetime(2026, 1, 2, tzinfo=UTC)
    conditions = api.set_condition([], api.ConditionType.JOINED, False, "Waiting", at=t0)
    same = api.set_condition(
        conditions, api.ConditionType.JOINED, False, "StillWaiting", generation=2, at=t1
    )
    assert same[0].last_transition_time == t0
    assert same[0].reason == "StillWaiting"
    assert same[0].observed_generation == 2
    flipped = api.set_condition(same, api.ConditionType.JOINED, True, "Joined", at=t1)
    assert flipped[0].last_transition_time == t1
    assert flipped[0].status is api.ConditionStatus.TRUE
    both = api.set_condition(flipped, api.ConditionType.SCHEDULED, True, "Placed", at=t1)
    assert [c.type for c in both] == [api.ConditionType.JOINED, api.ConditionType.SCHEDULED]


def test_phase_knows_when_it_is_finished() -> None:
    assert api.Phase.ENDED.finished and api.Phase.FAILED.finished
    assert not api.Phase.JOINED.finished


@pytest.mark.parametrize(
    ("taint", "toleration", "tolerated"),
    [
        ({"key": "gpu", "effect": "NoSchedule"}, {"key": "gpu", "operator": "Exists"}, True),
        ({"key": "gpu", "value": "a", "effect": "NoSchedule"}, {"key": "gpu", "value": "b"}, False),
        ({"key": "gpu", "value": "a", "effect": "NoSchedule"}, {"key": "gpu", "value": "a"}, True),
        (
            {"key": "gpu", "effect": "NoExecute"},
            {"key": "gpu", "operator": "Exists", "effect": "NoSchedule"},
            False,
        ),
        ({"key": "anything", "effect": "NoSchedule"}, {"operator": "Exists"}, True),
        ({"key": "other", "effect": "NoSchedule"}, {"key": "gpu", "operator": "Exists"}, False),
    ],
)
def test_toleration_matches_like_kubernetes(
    taint: dict[str, str], toleration: dict[str, str], tolerated: bool
) -> None:
    assert api.Toleration.model_validate(toleration).tolerates(taint) is tolerated


def test_session_names_are_deterministic_and_dns_safe() -> None:
    name = api.session_name_for_room("Abcd-EFGH_ijkl")
    assert name == api.session_name_for_room("Abcd-EFGH_ijkl")
    assert name != api.session_name_for_room("abcd-efgh-ijkl")
    assert api.session_name_for_room("r", "p1") != api.session_name_for_room("r", "p2")
    for room in ["abcd-efgh-ijkl", "___", "x" * 128, "A_B"]:
        name = api.session_name_for_room(room)
        assert len(name) <= 63
        assert api.re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", name), name
