"""JSON merge patch, JSON patch and the strategic merge subset."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from avatar_devtools.localcluster import errors, patches

json_scalars = st.none() | st.booleans() | st.integers() | st.text(max_size=5)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3)
    ),
    max_leaves=12,
)
json_objects = st.dictionaries(st.text(max_size=3), json_values, max_size=4)


def test_merge_patch_merges_maps_deletes_nulls_replaces_lists() -> None:
    target = {"a": {"b": 1, "c": 2}, "l": [1, 2], "gone": 1}
    patched = patches.merge_patch(target, {"a": {"c": None, "d": 3}, "l": [3], "gone": None})
    assert patched == {"a": {"b": 1, "d": 3}, "l": [3]}


@given(json_objects, json_objects)
def test_merge_patch_is_idempotent(target: dict[str, Any], patch: dict[str, Any]) -> None:
    once = patches.merge_patch(copy.deepcopy(target), patch)
    twice = patches.merge_patch(copy.deepcopy(once), patch)
    assert once == twice


def test_json_patch_operations() -> None:
    doc = {"a": [1, 2], "b": {"c": "x"}}
    ops = [
        {"op": "add", "path": "/a/-", "value": 3},
        {"op": "add", "path": "/a/0", "value": 0},
        {"op": "remove", "path": "/a/1"},
        {"op": "replace", "path": "/b/c", "value": "y"},
        {"op": "copy", "from": "/b/c", "path": "/d"},
        {"op": "move", "from": "/d", "path": "/b/e~1f"},
        {"op": "test", "path": "/b/c", "value": "y"},
    ]
    assert patches.json_patch(doc, ops) == {"a": [0, 2, 3], "b": {"c": "y", "e/f": "y"}}


def test_json_patch_failed_test_is_422() -> None:
    with pytest.raises(errors.ApiError) as e:
        patches.json_patch({"a": 1}, [{"op": "test", "path": "/a", "value": 2}])
    assert e.value.code == 422


def test_json_patch_missing_path_is_422_and_garbage_is_400() -> None:
    with pytest.raises(errors.ApiError) as missing:
        patches.json_patch({"a": 1}, [{"op": "remove", "path": "/b"}])
    with pytest.raises(errors.ApiError) as garbage:
        patches.json_patch({"a": 1}, {"op": "remove"})
    assert missing.value.code == 422
    assert garbage.value.code == 400


def pod_spec() -> dict[str, Any]:
    return {
        "metadata": {"finalizers": ["a"], "labels": {"x": "1"}},
        "spec": {
            "containers": [
                {
                    "name": "main",
                    "image": "one",
                    "env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}],
                    "ports": [{"containerPort": 80}],
                },
                {"name": "side", "image": "two"},
            ],
            "volumes": [{"name": "v", "emptyDir": {}}],
            "tolerations": [{"key": "k", "operator": "Exists"}],
        },
    }


def test_strategic_merge_merges_lists_by_key() -> None:
    patch = {
        "metadata": {"finalizers": ["b", "a"]},
        "spec": {
            "containers": [
                {"name": "main", "env": [{"name": "B", "value": "3"}, {"name": "C", "value": "4"}]},
                {"name": "new", "image": "three"},
            ],
            "tolerations": [{"key": "other", "operator": "Exists"}],
        },
    }
    patched = patches.strategic_merge_patch(pod_spec(), patch)
    containers = patched["spec"]["containers"]
    assert [c["name"] for c in containers] == ["main", "side", "new"]
    assert containers[0]["image"] == "one"
    assert containers[0]["env"] == [
        {"name": "A", "value": "1"},
        {"name": "B", "value": "3"},
        {"name": "C", "value": "4"},
    ]
    assert patched["metadata"]["finalizers"] == ["a", "b"]
    assert patched["spec"]["tolerations"] == [{"key": "other", "operator": "Exists"}]


def test_strategic_merge_directives() -> None:
    patch = {
        "metadata": {
            "$deleteFromPrimitiveList/finalizers": ["a"],
            "labels": {"$patch": "replace", "y": "2"},
        },
        "spec": {
            "containers": [{"name": "side", "$patch": "delete"}],
            "volumes": [{"$patch": "replace"}, {"name": "w", "emptyDir": {}}],
            "$setElementOrder/containers": [{"name": "main"}],
        },
    }
    patched = patches.strategic_merge_patch(pod_spec(), patch)
    assert patched["metadata"] == {"finalizers": [], "labels": {"y": "2"}}
    assert [c["name"] for c in patched["spec"]["containers"]] == ["main"]
    assert patched["spec"]["volumes"] == [{"name": "w", "emptyDir": {}}]


def test_strategic_merge_needs_the_merge_key() -> None:
    with pytest.raises(errors.ApiError) as e:
        patches.strategic_merge_patch(pod_spec(), {"spec": {"containers": [{"image": "x"}]}})
    assert e.value.code == 400
