"""A CRD's schema applied to custom resources: pruning, defaults, validation, field paths."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from localcluster_helpers import widget_crd

from avatar_devtools.localcluster import errors, resources, schemas, store
from avatar_sdk import api
from avatar_sdk import crd as sdk_crd

REPO = Path(__file__).resolve().parents[3]


def avatarsession_schema() -> dict[str, Any]:
    crd = sdk_crd.custom_resource_definition()
    schema: dict[str, Any] = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return schema


def session(spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": api.API_VERSION,
        "kind": api.KIND,
        "metadata": {"name": "s1", "namespace": "default"},
        "spec": spec,
    }


def causes_of(obj: dict[str, Any]) -> list[errors.StatusCause]:
    return schemas.CustomResourceSchema(avatarsession_schema()).admit(obj)


def test_defaults_fill_nested_objects_as_the_api_server_does() -> None:
    obj = session({"roomId": "abc-def"})
    assert causes_of(obj) == []
    spec = obj["spec"]
    assert spec["video"] == {"width": 512, "height": 512, "fps": 30}
    assert spec["audio"] == {"sampleRate": 24000, "channels": 1}
    assert spec["lifetime"]["ttlSecondsAfterFinished"] == 300
    # What the API server defaults agrees with what the models default.
    model = api.AvatarSessionSpec.model_validate({"roomId": "abc-def"})
    assert spec["video"] == model.video.to_wire()


def test_unknown_fields_are_pruned_and_nulls_allowed_where_nullable() -> None:
    obj = session(
        {"roomId": "abc", "typo": 1, "video": {"fps": 25, "extra": True}, "participantId": None}
    )
    obj["status"] = {"phase": "Pending", "kopf": {"progress": {}}, "handler_result": 1}
    assert causes_of(obj) == []
    assert "typo" not in obj["spec"] and "extra" not in obj["spec"]["video"]
    assert obj["status"] == {"phase": "Pending"}
    assert obj["spec"]["participantId"] is None


@pytest.mark.parametrize(
    ("spec", "field", "words"),
    [
        ({"roomId": "abc", "video": {"fps": 500}}, "spec.video.fps", "less than or equal to 60"),
        ({}, "spec.roomId", "Required value"),
        ({"roomId": "a b"}, "spec.roomId", "should match"),
        # kube-openapi stops at a string's first error: too short, not also unmatched
        ({"roomId": ""}, "spec.roomId", "should be at least 1 chars long"),
        (
            {"roomId": "abc", "avatar": {"renderer": "cartoon"}},
            "spec.avatar.renderer",
            "Unsupported value",
        ),
        ({"roomId": "abc", "video": {"fps": "fast"}}, "spec.video.fps", "must be of type integer"),
        ({"roomId": "abc", "video": {"width": 513}}, "spec.video.width", "multiple of 2"),
        (
            {"roomId": "abc", "tolerations": [{"operator": "Sometimes"}]},
            "spec.tolerations[0].operator",
            "Unsupported value",
        ),
        ({"roomId": "abc", "audio": None}, "spec.audio", None),
    ],
)
def test_invalid_specs_name_the_field(spec: dict[str, Any], field: str, words: str | None) -> None:
    found = causes_of(session(spec))
    if words is None:  # `audio: null` where not nullable: the default replaces it
        assert found == []
        return
    # "<nil>": the CEL rules were not run after a blocking error, as kube-apiserver says
    assert [c["field"] for c in found if c["field"] != "<nil>"] == [field]
    assert words in found[0]["message"]


def test_422_message_reads_like_kube_apiserver() -> None:
    causes = causes_of(session({"roomId": "abc", "video": {"fps": 500}}))
    error = errors.invalid(api.KIND, api.GROUP, "s1", causes)
    assert error.code == 422
    assert error.message == (
        'AvatarSession.avatar-operator.dev "s1" is invalid: spec.video.fps: Invalid value: 500: '
        "spec.video.fps in body should be less than or equal to 60"
    )


def test_structural_schema_errors_name_the_path() -> None:
    crd = widget_crd()
    spec_schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    spec_schema["properties"]["tags"] = {
        "type": "object",
        "patternProperties": {"^a": {"type": "string"}},
    }
    spec_schema["properties"]["untyped"] = {"description": "no type"}
    db = store.Store()
    with pytest.raises(errors.ApiError) as e:
        db.create(resources.CRDS, None, crd)
    fields = [c["field"] for c in e.value.details["causes"]] if e.value.details else []
    base = "spec.versions[0].schema.openAPIV3Schema.properties[spec].properties"
    assert f"{base}[tags].patternProperties" in fields
    assert f"{base}[untyped].type" in fields


def test_lenient_store_accepts_a_non_structural_crd_with_a_warning() -> None:
    crd = widget_crd()
    tags = {"type": "object", "patternProperties": {"^a": {"type": "string"}}}
    crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"][
        "tags"
    ] = tags
    db = store.Store(strict_crd_schemas=False)
    db.create(resources.CRDS, None, crd)
    info = db.lookup("test.localcluster.dev", "v1", "widgets")
    obj = {"metadata": {"name": "w"}, "spec": {"size": 1, "tags": {"ab": "kept", "b": "pruned"}}}
    assert db.create(info, "default", obj).obj["spec"]["tags"] == {"ab": "kept"}


def test_project_crd_is_served_as_generated(avatarsession_crd: dict[str, Any]) -> None:
    db = store.Store()
    db.create(resources.CRDS, None, avatarsession_crd)
    info = db.lookup(api.GROUP, api.VERSION, api.PLURAL)
    assert info.status_subresource and info.short_names == api.SHORT_NAMES
    assert db.find(resources.CRDS, None, f"{api.PLURAL}.{api.GROUP}") is not None


# --- the compiled forms agree with the reference ones -------------------------------------------

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-3, 70000)
    | st.floats(-1e3, 1e5, allow_nan=False)
    | st.text(max_size=6)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=8,
)


def instances(node: dict[str, Any], depth: int = 0) -> st.SearchStrategy[Any]:
    """Values shaped by a schema node, often valid, often just off (bounds, types, patterns)."""
    kind = node.get("type")
    options: list[st.SearchStrategy[Any]] = [json_values]
    if node.get("nullable"):
        options.append(st.none())
    if "enum" in node:
        options.append(st.sampled_from(node["enum"]))
    if kind == "object" and depth < 4:
        properties = node.get("properties") or {}
        optional = {k: instances(sub, depth + 1) for k, sub in properties.items()}
        extra = node.get("additionalProperties")
        extras = (
            st.dictionaries(st.text(max_size=4), instances(extra, depth + 1), max_size=2)
            if isinstance(extra, dict)
            else st.just({})
        )
        options.append(
            st.builds(lambda a, b: {**b, **a}, st.fixed_dictionaries({}, optional=optional), extras)
        )
    elif kind == "array" and isinstance(node.get("items"), dict) and depth < 4:
        options.append(st.lists(instances(node["items"], depth + 1), max_size=3))
    elif kind == "integer":
        low, high = node.get("minimum", -10), node.get("maximum", 100000)
        options.append(st.integers(low - 2, high + 2))
    elif kind == "number":
        options.append(st.floats(-10, 1000, allow_nan=False))
    elif kind == "string":
        if "pattern" in node:
            options.append(st.from_regex(node["pattern"], fullmatch=True))
        if node.get("format") == "date-time":
            options.append(
                st.sampled_from(["2026-01-01T00:00:00Z", "2026-13-01T00:00:00Z", "soon"])
            )
        options.append(st.text(max_size=int(node.get("maxLength", 10)) + 2))
    elif kind == "boolean":
        options.append(st.booleans())
    return st.one_of(options)


SCHEMA = avatarsession_schema()
WIDGET_SCHEMA = widget_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
CASES = {
    "spec": SCHEMA["properties"]["spec"],
    "status": SCHEMA["properties"]["status"],
    "widget": WIDGET_SCHEMA["properties"]["spec"],
}


@pytest.mark.parametrize("case", sorted(CASES))
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_compiled_check_agrees_with_jsonschema(case: str, data: st.DataObject) -> None:
    node = CASES[case]
    value = data.draw(instances(node))
    translated = schemas.translate(node)
    expected = jsonschema.Draft4Validator(translated, format_checker=schemas._FORMATS).is_valid(
        value
    )
    assert schemas.compile_check(translated)(value) == expected


@pytest.mark.parametrize("case", sorted(CASES))
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_compiled_prune_and_defaults_agree_with_the_reference(
    case: str, data: st.DataObject
) -> None:
    node = CASES[case]
    value = data.draw(instances(node))
    reference = schemas.apply_defaults(schemas.prune(copy.deepcopy(value), node), node)
    compiled = copy.deepcopy(value)
    pruner, defaulter = schemas.compile_pruner(node), schemas.compile_defaulter(node)
    if pruner is not None:
        pruner(compiled)
    if defaulter is not None:
        defaulter(compiled)
    assert compiled == reference


async def test_field_validation_as_kube_apiserver_does_it() -> None:
    """Strict refuses undeclared fields with 400 naming each; Warn (the default) prunes them
    and says so in `Warning` headers; Ignore prunes them silently; a body past 3 MiB is 413."""
    import aiohttp
    import yaml

    from avatar_devtools.localcluster import cluster

    crd = yaml.safe_load((REPO / "crds" / "avatarsessions.yaml").read_text())
    body = {
        "apiVersion": "avatar-operator.dev/v1alpha1",
        "kind": "AvatarSession",
        "metadata": {"name": "fv", "namespace": "default"},
        "spec": {"roomId": "abc", "resources": {"gpus": 1}, "video": {"colour": "red"}},
    }
    async with cluster.LocalCluster(crds=[crd]) as local, aiohttp.ClientSession() as http:
        url = f"{local.url}/apis/avatar-operator.dev/v1alpha1/namespaces/default/avatarsessions"
        async with http.post(f"{url}?fieldValidation=Strict", json=body) as response:
            assert response.status == 400
            message = (await response.json())["message"]
            assert 'unknown field "spec.resources.gpus"' in message
            assert 'unknown field "spec.video.colour"' in message
        async with http.post(url, json=body) as response:
            assert response.status == 201
            assert response.headers.getall("Warning") == [
                '299 - "unknown field \\"spec.resources.gpus\\""',
                '299 - "unknown field \\"spec.video.colour\\""',
            ]
            assert "gpus" not in (await response.json())["spec"]["resources"]
        async with http.post(f"{url}?fieldValidation=Bogus", json=body) as response:
            assert response.status == 400
        huge = {**body, "metadata": {"name": "huge", "namespace": "default"}}
        huge["spec"] = {"roomId": "a" * (1 << 20)}
        async with http.post(url, json=huge) as response:
            assert response.status == 422  # too long for the field, not a 500
        huge["spec"] = {"roomId": "a" * (4 << 20)}
        async with http.post(url, json=huge) as response:
            assert response.status == 413
