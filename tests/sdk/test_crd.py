"""The generated CRDs (AvatarSession, AvatarPool): fresh, structural, explained, and in
agreement with the models."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from avatar_sdk import api, crd, pools


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


@pytest.mark.parametrize("kind", crd.KINDS)
def test_committed_crd_is_fresh(repo_root: Path, kind: str) -> None:
    committed = (repo_root / "crds" / crd.file_name(kind)).read_text()
    assert committed == crd.render_yaml(kind), (
        "crds/ is stale: run `make crds` and commit the result"
    )


def test_crds_directory_holds_exactly_the_generated_files(repo_root: Path) -> None:
    names = sorted(p.name for p in (repo_root / "crds").iterdir())
    assert names == ["avatarpools.yaml", "avatarsessions.yaml"]
    assert [crd.file_name(k) for k in crd.KINDS] == ["avatarsessions.yaml", "avatarpools.yaml"]


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


@pytest.mark.parametrize("kind", crd.KINDS)
def test_schema_is_structural(kind: str) -> None:
    """What the API server demands of a structural schema, checked node by node."""
    root = version(crd.custom_resource_definition(kind))["schema"]["openAPIV3Schema"]
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


@pytest.mark.parametrize("kind", crd.KINDS)
def test_every_spec_and_status_field_is_explained(kind: str) -> None:
    """`kubectl explain avatarsession.spec.<field>` (and `avatarpool.spec.<field>`) prints a
    description for each field."""
    root = version(crd.custom_resource_definition(kind))["schema"]["openAPIV3Schema"]
    assert root["description"]
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


def apply_defaults(schema: dict[str, Any], value: Any) -> Any:
    """Structural defaulting as the API server does it: top down, a default then defaulted."""
    if not isinstance(value, dict):
        return value
    out = dict(value)
    for name, sub in schema.get("properties", {}).items():
        if name not in out and "default" in sub:
            out[name] = sub["default"]
        if name in out:
            out[name] = apply_defaults(sub, out[name])
    return out


def test_spec_defaults_match_the_models(crd_object: dict[str, Any]) -> None:
    """The API server fills in the same defaults as the models do."""
    spec = version(crd_object)["schema"]["openAPIV3Schema"]["properties"]["spec"]
    defaulted = apply_defaults(spec, {"roomId": "r"})
    from_models = {k: v for k, v in api.parse_spec({"roomId": "r"}).to_wire().items() if v != []}
    assert defaulted == {k: v for k, v in from_models.items() if v != {}}


@pytest.mark.parametrize("kind", crd.KINDS)
def test_status_has_no_defaults(kind: str) -> None:
    crd_object = crd.custom_resource_definition(kind)
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


def test_full_example_sets_every_spec_field(
    examples: dict[str, dict[str, Any]], repo_root: Path
) -> None:
    """session-full.yaml sets every field of a cold session; poolRef (a session that takes a
    warm worker, whose settings then come from the pool) is shown in pool.yaml instead."""
    spec = examples["session-full.yaml"]["spec"]
    top_level = {f.alias or n for n, f in api.AvatarSessionSpec.model_fields.items()}
    assert top_level - {"poolRef"} <= set(spec), top_level - set(spec)
    documents = yaml.safe_load_all((repo_root / "examples" / "pool.yaml").read_text())
    pooled = [d for d in documents if d and d["kind"] == api.KIND]
    assert pooled and all(d["spec"]["poolRef"]["name"] for d in pooled)


def test_cli_writes_the_file(tmp_path: Path) -> None:
    out = tmp_path / "crd.yaml"
    assert crd.main(["--out", str(out)]) == 0
    assert yaml.safe_load(out.read_text()) == crd.custom_resource_definition()
    assert crd.main(["--kind", "AvatarPool", "--out", str(out)]) == 0
    assert yaml.safe_load(out.read_text()) == crd.custom_resource_definition(pools.POOL_KIND)


def test_cli_writes_every_crd_into_a_directory(tmp_path: Path, repo_root: Path) -> None:
    """What `make crds` runs: both files, byte for byte what is committed."""
    assert crd.main(["--out-dir", str(tmp_path / "crds")]) == 0
    written = sorted((tmp_path / "crds").iterdir())
    assert [p.name for p in written] == ["avatarpools.yaml", "avatarsessions.yaml"]
    for path in written:
        assert path.read_text() == (repo_root / "crds" / path.name).read_text()


def test_an_unknown_kind_is_refused() -> None:
    with pytest.raises(ValueError, match="AvatarPool"):
        crd.custom_resource_definition("AvatarFleet")


def test_a_schema_the_crd_cannot_express_is_refused() -> None:
    with pytest.raises(ValueError, match="anyOf"):
        crd._resolve({"anyOf": [{"type": "string"}, {"type": "integer"}]}, {}, True)


# ---------------------------------------------------------------------------------------------
# AvatarPool


def test_pool_identity_names_scope_and_subresources(pool_crd_object: dict[str, Any]) -> None:
    assert pool_crd_object["metadata"]["name"] == "avatarpools.avatar-operator.dev"
    spec = pool_crd_object["spec"]
    assert (spec["group"], spec["scope"]) == ("avatar-operator.dev", "Namespaced")
    assert spec["names"] == {
        "kind": "AvatarPool",
        "listKind": "AvatarPoolList",
        "plural": "avatarpools",
        "singular": "avatarpool",
        "shortNames": ["avp"],
        "categories": ["avatars"],
    }
    v = version(pool_crd_object)
    assert v["name"] == "v1alpha1" and v["served"] and v["storage"]
    assert v["subresources"] == {
        "status": {},
        "scale": {
            "specReplicasPath": ".spec.replicas",
            "statusReplicasPath": ".status.replicas",
            "labelSelectorPath": ".status.selector",
        },
    }


def test_pool_scale_paths_point_at_fields_of_the_right_type(
    pool_crd_object: dict[str, Any],
) -> None:
    """kube-apiserver refuses a scale subresource whose paths are not an integer (replicas)
    and a string (selector) in the schema."""
    root = version(pool_crd_object)["schema"]["openAPIV3Schema"]
    scale = version(pool_crd_object)["subresources"]["scale"]

    def node(path: str) -> dict[str, Any]:
        found = root
        for part in path.strip(".").split("."):
            found = found["properties"][part]
        return found

    assert node(scale["specReplicasPath"])["type"] == "integer"
    assert node(scale["statusReplicasPath"])["type"] == "integer"
    assert node(scale["labelSelectorPath"])["type"] == "string"


def test_pool_printer_columns(pool_crd_object: dict[str, Any]) -> None:
    columns = [
        (c["name"], c["jsonPath"]) for c in version(pool_crd_object)["additionalPrinterColumns"]
    ]
    assert columns == [
        ("Desired", ".spec.replicas"),
        ("Ready", ".status.readyReplicas"),
        ("Claimed", ".status.claimed"),
        ("Starting", ".status.starting"),
        ("Age", ".metadata.creationTimestamp"),
    ]


def test_pool_bounds_and_enums_reach_the_schema(pool_crd_object: dict[str, Any]) -> None:
    root = version(pool_crd_object)["schema"]["openAPIV3Schema"]
    props = root["properties"]["spec"]["properties"]
    assert (props["replicas"]["minimum"], props["replicas"]["maximum"]) == (0, 500)
    assert props["whenEmpty"]["enum"] == ["Cold", "Wait"]
    template = props["template"]["properties"]
    assert set(template) == {
        "avatar",
        "video",
        "audio",
        "resources",
        "nodeSelector",
        "tolerations",
        "signalingBaseUrl",
    }
    assert template["video"]["properties"]["fps"]["maximum"] == 60
    assert template["resources"]["properties"]["gpu"]["enum"] == ["shared", "exclusive", "none"]
    assert any("vramMiB" in r["rule"] for r in template["resources"]["x-kubernetes-validations"])
    status = root["properties"]["status"]["properties"]
    assert status["conditions"]["items"]["properties"]["type"]["enum"] == ["Ready", "Progressing"]


def test_pool_spec_defaults_match_the_models(pool_crd_object: dict[str, Any]) -> None:
    """A pool without a spec is defaulted by the API server as by the models: one worker of the
    session defaults, cold when empty."""
    root = version(pool_crd_object)["schema"]["openAPIV3Schema"]
    from_models = pools.parse_pool_spec({}).to_wire()
    assert apply_defaults(root, {})["spec"] == from_models
    assert apply_defaults(root["properties"]["spec"], {}) == from_models
    assert from_models["replicas"] == 1 and from_models["whenEmpty"] == "Cold"


def test_session_pool_ref_reaches_the_schema(crd_object: dict[str, Any]) -> None:
    spec = version(crd_object)["schema"]["openAPIV3Schema"]["properties"]["spec"]
    ref = spec["properties"]["poolRef"]
    assert ref["required"] == ["name"] and "default" not in ref
    assert ref["properties"]["name"]["pattern"] == api.DNS_LABEL_PATTERN
    assert ref["properties"]["name"]["maxLength"] == 63
    assert "warm worker" in ref["description"]


def test_pool_example_validates_against_both_schemas_and_the_models(
    repo_root: Path,
    schema_validator: jsonschema.Draft4Validator,
    pool_schema_validator: jsonschema.Draft4Validator,
) -> None:
    documents = [
        d for d in yaml.safe_load_all((repo_root / "examples" / "pool.yaml").read_text()) if d
    ]
    assert {d["kind"] for d in documents} == {pools.POOL_KIND, api.KIND}
    for body in documents:
        validator = pool_schema_validator if body["kind"] == pools.POOL_KIND else schema_validator
        errors = [e.message for e in validator.iter_errors(body)]
        assert not errors, f"{body['kind']}: {errors}"
    pool = pools.AvatarPool.model_validate(
        next(d for d in documents if d["kind"] == pools.POOL_KIND)
    )
    session = api.AvatarSession.model_validate(next(d for d in documents if d["kind"] == api.KIND))
    assert (pool.name, pool.spec.replicas) == ("default", 2)
    assert pool.spec.template.avatar.renderer is api.Renderer.PORTRAIT
    assert session.spec.pool_ref is not None and session.spec.pool_ref.name == pool.name
    assert session.namespace == pool.namespace


def test_the_pool_schema_refuses_what_the_models_refuse(
    pool_schema_validator: jsonschema.Draft4Validator,
) -> None:
    for spec, field in (
        ({"replicas": -1}, "spec.replicas"),
        ({"replicas": 501}, "spec.replicas"),
        ({"whenEmpty": "Later"}, "spec.whenEmpty"),
        ({"template": {"video": {"fps": 0}}}, "spec.template.video.fps"),
        ({"template": {"roomId": "r"}}, "spec.template.roomId"),
    ):
        with pytest.raises(api.SpecError) as refused:
            pools.parse_pool_spec(spec)
        assert field in refused.value.fields, (spec, refused.value.fields)
        body = {
            "apiVersion": api.API_VERSION,
            "kind": pools.POOL_KIND,
            "metadata": {},
            "spec": spec,
        }
        if field != "spec.template.roomId":  # unknown fields are pruned by the server, not refused
            assert list(pool_schema_validator.iter_errors(body)), spec
