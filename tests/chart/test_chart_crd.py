"""The chart ships the generated CRD unchanged, and the examples (and the dispatcher's session
template) validate against that CRD's schema."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from chart_support import CHART_DIR, CI_DIR, REPO_ROOT

from avatar_sdk import api


@pytest.fixture(scope="module")
def crd() -> dict[str, Any]:
    return yaml.safe_load((CHART_DIR / "crds" / "avatarsessions.yaml").read_text())


@pytest.fixture(scope="module")
def validator(crd: dict[str, Any]) -> jsonschema.Draft4Validator:
    return jsonschema.Draft4Validator(crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"])


def test_the_charts_crd_is_the_generated_one() -> None:
    """`make crds` writes both; a stale copy here would install an old schema."""
    ours = (CHART_DIR / "crds" / "avatarsessions.yaml").read_text()
    assert ours == (REPO_ROOT / "crds" / "avatarsessions.yaml").read_text(), "run `make crds`"
    assert sorted(p.name for p in (CHART_DIR / "crds").iterdir()) == ["avatarsessions.yaml"]


def session_examples() -> list[Path]:
    found = []
    for path in sorted((REPO_ROOT / "examples").glob("*.yaml")):
        docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
        if any(d.get("kind") == api.KIND for d in docs):
            found.append(path)
    return found


def test_the_kind_example_exists() -> None:
    assert "session.yaml" in {p.name for p in session_examples()}


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
