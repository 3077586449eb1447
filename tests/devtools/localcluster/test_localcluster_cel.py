"""CEL validation rules (`x-kubernetes-validations`) evaluated by the emulated API (no kubectl):
the project's CRD, and the rule features a CRD may use (messageExpression, fieldPath, reason,
transition rules, list items and map values, ratcheting)."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from localcluster_helpers import widget_crd

from avatar_devtools.localcluster import cel, errors, resources, store
from avatar_sdk import crd as sdk_crd

GROUP = "avatar-operator.dev"


@pytest.fixture
def db() -> store.Store:
    the_store = store.Store()
    the_store.create(resources.CRDS, None, sdk_crd.custom_resource_definition())
    return the_store


def sessions(db: store.Store) -> resources.ResourceInfo:
    return db.lookup(GROUP, "v1alpha1", "avatarsessions")


def session(name: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/v1alpha1",
        "kind": "AvatarSession",
        "metadata": {"name": name},
        "spec": {"roomId": "room-1", **spec},
    }


def refused(db: store.Store, body: dict[str, Any]) -> errors.ApiError:
    with pytest.raises(errors.ApiError) as e:
        db.create(sessions(db), "default", body)
    assert e.value.code == 422
    return e.value


# Where the project's CRD has CEL rules, the same table as tests/realcluster (the real server).
CEL_REFUSALS = [
    (
        {"video": {"width": 1920, "height": 1920}},
        "spec.video",
        "width × height must be at most 2073600 pixels (1920×1080)",
    ),
    (
        {"resources": {"gpu": "none", "vramMiB": 1024}},
        "spec.resources",
        "vramMiB must be empty when gpu is none",
    ),
    (
        {"avatar": {"renderer": "model"}},
        "spec.avatar",
        "modelPath is required when renderer is model",
    ),
    (
        {"avatar": {"volume": {"persistentVolumeClaim": "a", "configMap": "b"}}},
        "spec.avatar.volume",
        "set exactly one of persistentVolumeClaim or configMap",
    ),
    (
        {"credentials": {"secretRef": {"name": "a"}, "tokenSecretRef": {"name": "b"}}},
        "spec.credentials",
        "set secretRef or tokenSecretRef, not both",
    ),
    (
        {"nodeSelector": {"not a key!": "x"}},
        "spec.nodeSelector",
        "keys must be Kubernetes label keys",
    ),
]


@pytest.mark.parametrize(
    ("spec", "field", "message"), CEL_REFUSALS, ids=[c[1] for c in CEL_REFUSALS]
)
def test_the_crds_rules_refuse_naming_the_field(
    db: store.Store, spec: dict[str, Any], field: str, message: str
) -> None:
    error = refused(db, session("s", **spec))
    (cause,) = error.status()["details"]["causes"]
    assert cause == {
        "reason": "FieldValueInvalid",
        "field": field,
        "message": f"Invalid value: {message}",
    }
    assert f"{field}: Invalid value: {message}" in error.message


def test_a_valid_session_passes_every_rule(db: store.Store) -> None:
    spec = {
        "video": {"width": 1920, "height": 1080},
        "avatar": {"renderer": "model", "modelPath": "/models/m.pt"},
        "nodeSelector": {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"},
        "resources": {"gpu": "none"},
    }
    record = db.create(sessions(db), "default", session("ok", **spec))
    assert record.obj["spec"]["video"]["width"] == 1920


def test_room_id_is_immutable_and_other_fields_may_change(db: store.Store) -> None:
    info = sessions(db)
    db.create(info, "default", session("s"))
    with pytest.raises(errors.ApiError) as e:
        db.patch(info, "default", "s", store.MERGE_PATCH, {"spec": {"roomId": "other"}})
    assert e.value.code == 422
    assert "spec: Invalid value: roomId is immutable" in e.value.message
    patched = db.patch(info, "default", "s", store.MERGE_PATCH, {"spec": {"video": {"fps": 25}}})
    assert patched.obj["spec"]["video"]["fps"] == 25


def test_a_schema_error_of_the_blocking_kind_keeps_the_rules_from_running(
    db: store.Store,
) -> None:
    error = refused(db, session("s", video={"width": 1920, "height": 1920, "fps": "fast"}))
    fields = [c["field"] for c in error.status()["details"]["causes"]]
    assert fields == ["spec.video.fps", "<nil>"]
    assert "some validation rules were not checked" in error.message


def test_a_maximum_does_not_keep_the_rules_from_running(db: store.Store) -> None:
    error = refused(db, session("s", video={"width": 1920, "height": 1920, "fps": 1000}))
    fields = sorted(c["field"] for c in error.status()["details"]["causes"])
    assert fields == ["spec.video", "spec.video.fps"]


def _widgets(rules: dict[str, list[dict[str, Any]]], **extra: Any) -> tuple[store.Store, Any]:
    crd = widget_crd()
    spec = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    for where, found in rules.items():
        node = spec
        for step in where.split(".") if where else []:
            node = node["items"] if step == "[*]" else node["properties"][step]
        node["x-kubernetes-validations"] = found
    for where, value in extra.items():
        spec["properties"][where].update(value)
    db = store.Store()
    db.create(resources.CRDS, None, crd)
    return db, db.lookup("test.localcluster.dev", "v1", "widgets")


def widget(name: str, **spec: Any) -> dict[str, Any]:
    return {"metadata": {"name": name}, "spec": {"size": 1, **spec}}


def causes(db: store.Store, info: Any, body: dict[str, Any]) -> list[errors.StatusCause]:
    with pytest.raises(errors.ApiError) as e:
        db.create(info, "default", body)
    found: list[errors.StatusCause] = e.value.status()["details"]["causes"]
    return found


def test_message_expression_field_path_and_reason() -> None:
    rule = {
        "rule": "self.size <= 3 || has(self.note)",
        "messageExpression": "'size ' + string(self.size) + ' needs a note'",
        "fieldPath": ".note",
        "reason": "FieldValueRequired",
    }
    db, info = _widgets({"": [rule]})
    (cause,) = causes(db, info, widget("w", size=5))
    assert cause == {
        "reason": "FieldValueRequired",
        "field": "spec.note",
        "message": "Required value: size 5 needs a note",
    }
    db.create(info, "default", widget("ok", size=5, note="why"))


def test_a_rule_without_message_says_which_rule_failed() -> None:
    db, info = _widgets({"": [{"rule": "self.size != 4"}]})
    (cause,) = causes(db, info, widget("w", size=4))
    assert cause["message"] == "Invalid value: failed rule: self.size != 4"


def test_a_scalar_node_prints_its_value() -> None:
    db, info = _widgets({"color": [{"rule": "self != 'blue'", "message": "no blue"}]})
    (cause,) = causes(db, info, widget("w", color="blue"))
    assert cause == {
        "reason": "FieldValueInvalid",
        "field": "spec.color",
        "message": 'Invalid value: "blue": no blue',
    }


def test_rules_on_list_items_and_map_values_name_the_element() -> None:
    db, info = _widgets(
        {"parts.[*]": [{"rule": "self.count > 0", "message": "count"}]},
    )
    found = causes(
        db, info, widget("w", parts=[{"name": "a", "count": 1}, {"name": "b", "count": 0}])
    )
    assert [c["field"] for c in found] == ["spec.parts[1]"]
    crd_values = {
        "tags": {
            "additionalProperties": {
                "type": "string",
                "x-kubernetes-validations": [{"rule": "self.size() < 4", "message": "short"}],
            }
        }
    }
    db, info = _widgets({}, **crd_values)
    found = causes(db, info, widget("w", tags={"ok": "abc", "bad": "abcd"}))
    assert [c["field"] for c in found] == ["spec.tags[bad]"]


def test_an_evaluation_error_is_a_cause_naming_the_rule() -> None:
    db, info = _widgets({"": [{"rule": "self.note == 'x'", "message": "note must be x"}]})
    (cause,) = causes(db, info, widget("w"))
    assert cause["field"] == "spec"
    assert cause["message"] == (
        'Invalid value: "object": no such key: note evaluating rule: note must be x'
    )


def test_transition_rules_run_on_updates_only_and_optional_old_self_on_creates() -> None:
    db, info = _widgets(
        {
            "": [
                {"rule": "self.size >= oldSelf.size", "message": "size may only grow"},
                {
                    "rule": "oldSelf.hasValue() || self.size < 9",
                    "optionalOldSelf": True,
                    "message": "starts below 9",
                },
            ]
        }
    )
    assert [c["message"] for c in causes(db, info, widget("big", size=9))] == [
        "Invalid value: starts below 9"
    ]
    db.create(info, "default", widget("w", size=5))
    with pytest.raises(errors.ApiError) as e:
        db.patch(info, "default", "w", store.MERGE_PATCH, {"spec": {"size": 4}})
    assert "spec: Invalid value: size may only grow" in e.value.message
    db.patch(info, "default", "w", store.MERGE_PATCH, {"spec": {"size": 9}})


def test_an_unchanged_value_is_not_revalidated_ratcheting() -> None:
    db = store.Store()
    crd = widget_crd()
    db.create(resources.CRDS, None, crd)
    info = db.lookup("test.localcluster.dev", "v1", "widgets")
    db.create(info, "default", widget("old", size=7))
    strict = copy.deepcopy(crd)
    spec = strict["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    spec["x-kubernetes-validations"] = [{"rule": "self.size < 5", "message": "small"}]
    current = db.get(resources.CRDS, None, crd["metadata"]["name"]).obj
    strict["metadata"] = current["metadata"]
    db.update(resources.CRDS, None, crd["metadata"]["name"], strict)
    info = db.lookup("test.localcluster.dev", "v1", "widgets")
    # the stored object breaks the new rule: a status write, and a metadata write, still pass
    db.patch(info, "default", "old", store.MERGE_PATCH, {"metadata": {"labels": {"a": "b"}}})
    with pytest.raises(errors.ApiError):
        db.patch(info, "default", "old", store.MERGE_PATCH, {"spec": {"size": 8}})


def test_a_memoised_result_is_placed_at_each_values_own_path() -> None:
    node = cel.compile_rules(
        {"type": "object", "x-kubernetes-validations": [{"rule": "self.a > 1", "message": "a"}]}
    )
    assert node is not None
    failed = {"reason": "FieldValueInvalid", "field": "x", "message": "Invalid value: a"}
    assert cel.validate(node, {"a": 1}, path="x") == [failed]
    assert cel.validate(node, {"a": 1}, path="y") == [{**failed, "field": "y"}]
    assert cel.validate(node, {"a": 2}, path="x") == []


def test_a_rule_celpy_cannot_compile_is_logged_and_skipped(
    caplog: pytest.LogCaptureFixture,
) -> None:
    node = cel.compile_rules({"type": "string", "x-kubernetes-validations": [{"rule": "self ==="}]})
    assert node is None
    assert any("cannot compile" in r.getMessage() for r in caplog.records)


def test_a_rule_calling_a_kubernetes_library_function_is_logged_and_skipped(
    caplog: pytest.LogCaptureFixture,
) -> None:
    db, info = _widgets({"": [{"rule": "self.color.lowerAscii() == 'red'", "message": "red"}]})
    db.create(info, "default", widget("w", color="blue"))  # not refused: celpy lacks lowerAscii
    assert any("celpy lacks a function" in r.getMessage() for r in caplog.records)
