"""Fixtures for the contract's tests: the generated CRDs (AvatarSession, AvatarPool) and their
schema validators."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from avatar_sdk import crd, pools


@pytest.fixture(scope="session")
def crd_object() -> dict[str, Any]:
    return crd.custom_resource_definition()


@pytest.fixture(scope="session")
def schema_validator(crd_object: dict[str, Any]) -> jsonschema.Draft4Validator:
    """The CRD's openAPIV3Schema as the API server would apply it (CEL rules aside)."""
    schema = crd_object["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return jsonschema.Draft4Validator(schema)


@pytest.fixture(scope="session")
def examples(repo_root: Path) -> dict[str, dict[str, Any]]:
    return {
        path.name: yaml.safe_load(path.read_text())
        for path in sorted((repo_root / "examples").glob("session-*.yaml"))
    }


@pytest.fixture(scope="session")
def pool_crd_object() -> dict[str, Any]:
    return crd.custom_resource_definition(pools.POOL_KIND)


@pytest.fixture(scope="session")
def pool_schema_validator(pool_crd_object: dict[str, Any]) -> jsonschema.Draft4Validator:
    """The AvatarPool CRD's openAPIV3Schema as the API server would apply it."""
    schema = pool_crd_object["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return jsonschema.Draft4Validator(schema)
