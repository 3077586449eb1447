"""The generated CRD: fresh, structural, explained, and in agreement with the models."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from avatar_sdk import api, crd


def walk(schema: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    yield path, schema
    for name, sub in schema.get("properties", {}).items():
        yield from walk(sub, f"{path}.{name}")
    if isinstance(schema.get("items"), dict):
        yield from walk(schema["items"], f"{path}[]")
    if isinstance(schema.get("additionalProperties"), dict):
        yield from walk(schema["additionalProperties"], f"{path}{{}}")


def version(crd_object: dict[str, Any]) -> dict[str, Any]:
    versions: list[dict[str, Any]] = crd_object["spec"]["versions"]
    assert len(versions) == 1
    return versions[0]


def test_committed_crd_is_fresh(repo_root: Path) -> None:
    committed = (repo_root / "crds" / "avatarsessions.yaml").read_text()
    assert committed == crd.render_yaml(), "crds/ is stale: run `make crds` and commit the result"


def test_identity_names_and_scope(crd_object: dict[str, Any]) -> None:
    assert crd_object["metadata"]["name"] == "avatarsessions.avatar-operator.dev"
    spec = crd_object["spec"]
    assert spec["group"] == "avatar-operator.dev"
    assert spec["scope"] == "Namespaced"
    assert spec["names"]["kind"] == "AvatarSession"
    assert spec["names"]["plural"] == "avatarsessions"
    assert spec["names"]["shortNames"] == ["avs"]
    assert spec["names"]["categories"]
    v = version(crd_object)
    assert v["name"] == "v1alpha1" and v["served"] and v["storage"]
    assert v["subresources"] == {"status": {}}


def test_printer_columns(crd_object: dict[str, Any]) -> None:
    columns = {c["name"]: c["jsonPath"] for c in version(crd_object)["additionalPrinterColumns"]}
    assert columns["Phase"] == ".status.phase"
    assert columns["Playback"] == ".status.playback.state"
    assert columns["Node"] == ".status.placement.node"
    assert columns["GPU"] == ".status.placement.gpu"
    assert columns["VRAM"] == ".status.placement.vramMiB"
    assert columns["Age"] == ".metadata.creationTimestamp"


def test_schema_is_structural(crd_object: dict[str, Any]) -> None:
    """What the API server demands of a structural schema, checked node by node."""
    root = version(crd_object)["schema"]["openAPIV3Schema"]
    for path, node in walk(root):
        assert "type" in node, f"{path} has no type"
        for keyword in (
            "$ref",
            "anyOf",
            "oneOf",
            "allOf",
            "title",
            "propertyNames",
            "patternProperties",
            "const",
        ):
            assert keyword not in node, f"{path} uses {keyword}"
        if "properties" in node:
            assert "additionalProperties" not in node, f"{path} mixes properties with additional"
        assert "exclusiveMinimum" not in node and "exclusiveMaximum" not in node


def test_every_spec_and_status_field_is_explained(crd_object: dict[str, Any]) -> None:
    """`kubectl explain avatarsession.spec.<field>` prints a description for each field."""
    root = version(crd_object)["schema"]["openAPIV3Schema"]
    missing = [
        path
        for part in ("spec", "status")
        for path, node in walk(root["properties"][part], part)
        if "description" not in node and not path.endswith(("[]", "{}"))
    ]
    assert not missing, f"fields without a description: {missing}"


def test_bounds_enums_and_patterns_reach_the_schema(crd_object: dict[str, Any]) -> None:
    spec = version(crd_object)["schema"]["openAPIV3Schema"]["properties"]["spec"]
    props = spec["properties"]
    assert spec["required"] == ["roomId"]
    assert props["roomId"]["pattern"] == api.ROOM_ID_PATTERN
    assert props["video"]["properties"]["fps"]["maximum"] == 60
    assert props["video"]["properties"]["width"]["multipleOf"] == 2
    assert props["audio"]["properties"]["sampleRate"]["enum"] == list(api.SUPPORTED_SAMPLE_RATES)
    assert props["resources"]["properties"]["gpu"]["enum"] == ["shared", "exclusive", "none"]
    assert props["resources"]["properties"]["vramMiB"]["minimum"] == 512
    status = version(crd_object)["schema"]["openAPIV3Schema"]["properties"]["status"]
    assert status["properties"]["phase"]["enum"] == [p.value for p in api.Phase]


def test_cross_field_rules_are_cel_rules(crd_object: dict[str, Any]) -> None:
    spec = version(crd_object)["schema"]["openAPIV3Schema"]["properties"]["spec"]
    rules = {
        path: [r["rule"] for r in node.get("x-kubernetes-validations", [])]
        for path, node in walk(spec, "spec")
    }
    assert "self.roomId == oldSelf.roomId" in rules["spec"]
    assert any("modelPath" in r for r in rules["spec.avatar"])
    assert any("vramMiB" in r for r in rules["spec.resources"])
    assert any("self.width * self.height" in r for r in rules["spec.video"])


def test_spec_defaults_match_the_models(crd_object: dict[str, Any]) -> None:
    """The API server fills in the same defaults as the models do."""
    spec = version(crd_object)["schema"]["openAPIV3Schema"]["properties"]["spec"]

    def apply_defaults(schema: dict[str, Any], value: Any) -> Any:
        if not isinstance(value, dict):
            return value
        out = dict(value)
        for name, sub in schema.get("properties", {}).items():
            if name not in out and "default" in sub:
                out[name] = sub["default"]
            if name in out:
                out[name] = apply_defaults(sub, out[name])
        return out

    defaulted = apply_defaults(spec, {"roomId": "r"})
    from_models = {k: v for k, v in api.parse_spec({"roomId": "r"}).to_wire().items() if v != []}
    assert defaulted == {k: v for k, v in from_models.items() if v != {}}


def test_status_has_no_defaults(crd_object: dict[str, Any]) -> None:
    status = version(crd_object)["schema"]["openAPIV3Schema"]["properties"]["status"]
    assert not [path for path, node in walk(status, "status") if "default" in node]


def test_examples_validate_against_schema_and_models(
    examples: dict[str, dict[str, Any]], schema_validator: jsonschema.Draft4Validator
) -> None:
    assert {"session-minimal.yaml", "session-full.yaml"} <= set(examples)
    for name, body in examples.items():
        errors = [e.message for e in schema_validator.iter_errors(body)]
        assert not errors, f"{name}: {errors}"
        session = api.AvatarSession.model_validate(body)
        assert session.name, name


def test_full_example_sets_every_spec_field(examples: dict[str, dict[str, Any]]) -> None:
    spec = examples["session-full.yaml"]["spec"]
    top_level = {f.alias or n for n, f in api.AvatarSessionSpec.model_fields.items()}
    assert top_level <= set(spec), top_level - set(spec)


def test_cli_writes_the_file(tmp_path: Path) -> None:
    out = tmp_path / "crd.yaml"
    assert crd.main(["--out", str(out)]) == 0
    assert yaml.safe_load(out.read_text()) == crd.custom_resource_definition()


def test_a_schema_the_crd_cannot_express_is_refused() -> None:
    with pytest.raises(ValueError, match="anyOf"):
        crd._resolve({"anyOf": [{"type": "string"}, {"type": "integer"}]}, {}, True)
