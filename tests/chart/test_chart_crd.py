"""The chart ships the generated CRDs (AvatarSession, AvatarPool) unchanged, and the examples,
the dispatcher's session template and the chart's own AvatarPool validate against their
schemas."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from chart_support import CHART_DIR, CI_DIR, NAMESPACE, REPO_ROOT, Obj, render

from avatar_sdk import api, pools


@pytest.fixture(scope="module")
def crd() -> dict[str, Any]:
    return yaml.safe_load((CHART_DIR / "crds" / "avatarsessions.yaml").read_text())


@pytest.fixture(scope="module")
def validator(crd: dict[str, Any]) -> jsonschema.Draft4Validator:
    return jsonschema.Draft4Validator(crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"])


@pytest.fixture(scope="module")
def pool_validator() -> jsonschema.Draft4Validator:
    pool_crd = yaml.safe_load((CHART_DIR / "crds" / "avatarpools.yaml").read_text())
    return jsonschema.Draft4Validator(pool_crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"])


CRD_FILES = ["avatarpools.yaml", "avatarsessions.yaml"]


@pytest.mark.parametrize("name", CRD_FILES)
def test_the_charts_crd_is_the_generated_one(name: str) -> None:
    """`make crds` writes both places; a stale copy here would install an old schema."""
    ours = (CHART_DIR / "crds" / name).read_text()
    assert ours == (REPO_ROOT / "crds" / name).read_text(), "run `make crds`"
    assert sorted(p.name for p in (CHART_DIR / "crds").iterdir()) == CRD_FILES


def test_the_pool_crd_has_the_scale_subresource() -> None:
    pool_crd = yaml.safe_load((CHART_DIR / "crds" / "avatarpools.yaml").read_text())
    assert pool_crd["spec"]["names"]["kind"] == pools.POOL_KIND
    assert pool_crd["spec"]["versions"][0]["subresources"]["scale"] == {
        "specReplicasPath": ".spec.replicas",
        "statusReplicasPath": ".status.replicas",
        "labelSelectorPath": ".status.selector",
    }


def session_examples() -> list[Path]:
    found = []
    for path in sorted((REPO_ROOT / "examples").glob("*.yaml")):
        docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
        if any(d.get("kind") == api.KIND for d in docs):
            found.append(path)
    return found


def test_the_kind_example_exists() -> None:
    assert "session.yaml" in {p.name for p in session_examples()}


def pool_examples() -> list[Path]:
    found = []
    for path in sorted((REPO_ROOT / "examples").glob("*.yaml")):
        docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
        if any(d.get("kind") == pools.POOL_KIND for d in docs):
            found.append(path)
    return found


@pytest.mark.parametrize("path", session_examples(), ids=lambda p: p.name)
def test_examples_validate_against_the_crd(
    path: Path, validator: jsonschema.Draft4Validator
) -> None:
    for doc in yaml.safe_load_all(path.read_text()):
        if not doc or doc.get("kind") != api.KIND:
            continue
        errors = sorted(e.message for e in validator.iter_errors(doc))
        assert not errors, f"{path.name}: {errors}"
        api.AvatarSession.model_validate(doc)  # and the operator's own models


def test_the_pool_example_exists_and_a_session_names_it() -> None:
    assert [p.name for p in pool_examples()] == ["pool.yaml"]
    assert "pool.yaml" in {p.name for p in session_examples()}


@pytest.mark.parametrize("path", pool_examples(), ids=lambda p: p.name)
def test_pool_examples_validate_against_the_pool_crd(
    path: Path, pool_validator: jsonschema.Draft4Validator
) -> None:
    for doc in yaml.safe_load_all(path.read_text()):
        if not doc or doc.get("kind") != pools.POOL_KIND:
            continue
        errors = sorted(e.message for e in pool_validator.iter_errors(doc))
        assert not errors, f"{path.name}: {errors}"
        pools.AvatarPool.model_validate(doc)


@pytest.mark.parametrize(
    "values",
    [
        {"pool": {"create": True}},
        yaml.safe_load((CI_DIR / "pool-values.yaml").read_text()),
    ],
    ids=["defaults", "pool-values.yaml"],
)
def test_the_charts_pool_validates_against_the_pool_crd(
    values: Obj, pool_validator: jsonschema.Draft4Validator
) -> None:
    (pool,) = render(values).of_kind(pools.POOL_KIND)
    assert pool["metadata"]["namespace"] == NAMESPACE
    errors = sorted(e.message for e in pool_validator.iter_errors(pool))
    assert not errors, errors
    parsed = pools.AvatarPool.model_validate(pool)  # and the operator's own models
    assert parsed.spec.replicas == values["pool"].get("replicas", 1)


def test_a_bad_pool_template_is_refused_by_the_crd(
    pool_validator: jsonschema.Draft4Validator,
) -> None:
    """values.schema.json leaves the template to the CRD: a wrong one fails at install."""
    (pool,) = render({"pool": {"create": True, "template": {"video": {"fps": 1000}}}}).of_kind(
        pools.POOL_KIND
    )
    assert [e.message for e in pool_validator.iter_errors(pool)]
    with pytest.raises(api.SpecError, match=r"spec\.template\.video\.fps"):
        pools.parse_pool_spec(pool["spec"])


def test_the_kind_example_gets_a_gpu_and_speaks_to_an_agent() -> None:
    doc = yaml.safe_load((REPO_ROOT / "examples" / "session.yaml").read_text())
    session = api.AvatarSession.model_validate(doc)
    assert session.spec.resources.gpu == api.GpuMode.SHARED  # placement runs on kind
    assert session.spec.agent_participant_id
    assert session.spec.avatar.renderer == api.Renderer.WAVEFORM  # no real GPU on kind


def test_the_dispatcher_session_template_is_a_valid_spec(
    validator: jsonschema.Draft4Validator,
) -> None:
    values = yaml.safe_load((CI_DIR / "dispatcher-values.yaml").read_text())
    spec = {"roomId": "abcd-efgh-ijkl", **values["dispatcher"]["sessionTemplate"]}
    body = {
        "apiVersion": api.API_VERSION,
        "kind": api.KIND,
        "metadata": {"name": "launched"},
        "spec": spec,
    }
    assert not [e.message for e in validator.iter_errors(body)]
