"""The AvatarPool models: defaults, wire names, refusals named by their field, and a session's
poolRef."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from avatar_sdk import api, pools

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def test_constants_name_the_resource() -> None:
    assert (pools.POOL_KIND, pools.POOL_PLURAL, pools.POOL_SINGULAR) == (
        "AvatarPool",
        "avatarpools",
        "avatarpool",
    )
    assert pools.POOL_SHORT_NAMES == ("avp",)
    assert (pools.GROUP, pools.VERSION, pools.POOL_CATEGORIES) == (
        api.GROUP,
        api.VERSION,
        api.CATEGORIES,
    )
    assert pools.POOL_LABEL == "avatar-operator.dev/pool"
    assert pools.POOL_STATE_LABEL == "avatar-operator.dev/pool-state"
    assert pools.SESSION_LABEL == "avatar-operator.dev/session"
    assert [s.value for s in pools.PoolWorkerState] == ["starting", "ready", "claimed"]


def test_defaults_are_one_cold_worker_with_the_session_defaults() -> None:
    spec = pools.parse_pool_spec({})
    assert (spec.replicas, spec.when_empty) == (1, pools.PoolFallback.COLD)
    template = spec.template
    session = api.parse_spec({"roomId": "r"})
    assert template.avatar == session.avatar
    assert template.video == session.video
    assert template.audio == session.audio
    assert template.resources == session.resources
    assert (template.node_selector, template.tolerations) == ({}, [])
    assert template.signaling_base_url is None
    assert pools.AvatarPool().spec == spec


def test_wire_names_are_camel_case() -> None:
    spec = pools.parse_pool_spec(
        {
            "replicas": 3,
            "whenEmpty": "Wait",
            "template": {
                "signalingBaseUrl": "api.videosdk.live",
                "nodeSelector": {"nvidia.com/gpu.product": "NVIDIA-H200"},
                "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists"}],
                "resources": {"vramMiB": 3072},
                "audio": {"sampleRate": 16000},
            },
        }
    )
    wire = spec.to_wire()
    assert set(wire) == {"template", "replicas", "whenEmpty"}
    assert set(wire["template"]) == {
        "avatar",
        "video",
        "audio",
        "resources",
        "nodeSelector",
        "tolerations",
        "signalingBaseUrl",
    }
    assert wire["template"]["resources"]["vramMiB"] == 3072
    assert spec.when_empty is pools.PoolFallback.WAIT
    assert pools.AvatarPoolSpec.model_validate({"when_empty": "Cold"}).when_empty == "Cold"


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ({"replicas": -1}, "spec.replicas"),
        ({"replicas": 501}, "spec.replicas"),
        ({"replicas": "two"}, "spec.replicas"),
        ({"whenEmpty": "cold"}, "spec.whenEmpty"),
        ({"template": {"video": {"fps": 0}}}, "spec.template.video.fps"),
        (
            {"template": {"resources": {"gpu": "none", "vramMiB": 1024}}},
            "spec.template.resources.vramMiB",
        ),
        ({"template": {"avatar": {"renderer": "model"}}}, "spec.template.avatar.modelPath"),
        ({"template": {"signalingBaseUrl": "https://x"}}, "spec.template.signalingBaseUrl"),
        ({"template": {"nodeSelector": {"bad key!": "x"}}}, "spec.template.nodeSelector"),
        ({"template": {"roomId": "abc"}}, "spec.template.roomId"),  # sessions only
        ({"template": {"credentials": {}}}, "spec.template.credentials"),
        ({"size": 3}, "spec.size"),
    ],
)
def test_invalid_pool_specs_are_refused_naming_the_field(spec: dict[str, Any], field: str) -> None:
    with pytest.raises(api.SpecError) as refused:
        pools.parse_pool_spec(spec)
    assert any(f.startswith(field) for f in refused.value.fields), refused.value.fields


def test_a_spec_that_is_not_an_object_is_refused() -> None:
    with pytest.raises(api.SpecError, match="must be an object"):
        pools.parse_pool_spec(["replicas", 1])


def test_status_reads_counts_and_conditions_and_drops_what_it_cannot_read() -> None:
    wire = {
        "replicas": 3,
        "readyReplicas": 2,
        "starting": 1,
        "claimed": 4,
        "selector": pools.idle_selector("default"),
        "observedGeneration": 2,
        "conditions": [
            {
                "type": "Ready",
                "status": "False",
                "reason": "Starting",
                "message": "2 of 3 ready",
                "lastTransitionTime": "2026-01-01T00:00:00Z",
            }
        ],
        "fromTheFuture": True,
    }
    status = pools.parse_pool_status(wire)
    assert (status.replicas, status.ready_replicas, status.starting, status.claimed) == (3, 2, 1, 4)
    ready = status.condition(pools.PoolConditionType.READY)
    assert ready is not None and ready.status is api.ConditionStatus.FALSE
    assert status.condition(pools.PoolConditionType.PROGRESSING) is None
    assert "fromTheFuture" not in status.to_wire()
    broken = pools.parse_pool_status({"replicas": -3, "claimed": 1, "conditions": "nope"})
    assert (broken.replicas, broken.claimed, broken.conditions) == (0, 1, [])
    assert pools.parse_pool_status(None) == pools.AvatarPoolStatus()
    empty = pools.AvatarPoolStatus()
    assert (empty.replicas, empty.ready_replicas, empty.starting, empty.claimed) == (0, 0, 0, 0)


def test_selectors_of_the_pools_workers() -> None:
    assert pools.idle_selector("default") == (
        "avatar-operator.dev/pool=default,avatar-operator.dev/pool-state in (starting,ready)"
    )
    assert pools.workers_selector("default") == "avatar-operator.dev/pool=default"


def test_set_pool_condition_moves_transition_time_only_on_change() -> None:
    later = datetime(2026, 1, 1, 0, 5, tzinfo=UTC)
    first = pools.set_pool_condition([], pools.PoolConditionType.READY, False, "Starting", at=T0)
    same = pools.set_pool_condition(first, pools.PoolConditionType.READY, False, "Still", at=later)
    assert same[0].last_transition_time == T0 and same[0].reason == "Still"
    flipped = pools.set_pool_condition(same, pools.PoolConditionType.READY, True, "Ready", at=later)
    assert flipped[0].last_transition_time == later
    both = pools.set_pool_condition(
        flipped, pools.PoolConditionType.PROGRESSING, False, "Steady", generation=3, at=later
    )
    assert [c.type for c in both] == [
        pools.PoolConditionType.READY,
        pools.PoolConditionType.PROGRESSING,
    ]
    assert both[1].observed_generation == 3


def test_a_session_names_its_pool() -> None:
    spec = api.parse_spec({"roomId": "r", "poolRef": {"name": "default"}})
    assert spec.pool_ref == api.PoolRef(name="default")
    assert spec.to_wire()["poolRef"] == {"name": "default"}
    assert api.parse_spec({"roomId": "r"}).pool_ref is None
    assert "poolRef" not in api.parse_spec({"roomId": "r"}).to_wire()
    for bad in ({}, {"name": ""}, {"name": "Default"}, {"name": "a" * 64}, {"name": "a.b"}):
        with pytest.raises(api.SpecError) as refused:
            api.parse_spec({"roomId": "r", "poolRef": bad})
        assert any(f.startswith("spec.poolRef") for f in refused.value.fields), bad
    with pytest.raises(api.SpecError, match="lowercase letters, digits and '-'"):
        api.parse_spec({"roomId": "r", "poolRef": {"name": "Default"}})
