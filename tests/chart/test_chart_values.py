"""values.yaml: every key commented, every key in the strict schema, camelCase; Chart.yaml's
kubeVersion is what CI validates against."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import jsonschema
import yaml
from chart_support import CHART_DIR, KUBERNETES_VERSIONS, ci_value_sets

VALUES_TEXT = (CHART_DIR / "values.yaml").read_text()
SCHEMA = json.loads((CHART_DIR / "values.schema.json").read_text())


def leaf_paths(values: Any, prefix: str = "") -> Iterator[str]:
    if isinstance(values, dict) and values:
        for key, value in values.items():
            yield from leaf_paths(value, f"{prefix}.{key}" if prefix else key)
    else:
        yield prefix


def test_every_key_has_a_comment() -> None:
    """Every key has a comment right above it, unless a key it sits in is documented as a whole
    value (a `# --` comment, helm-docs' convention: a probe, a securityContext, resources)."""
    lines = VALUES_TEXT.splitlines()
    uncommented = []
    ancestors: list[tuple[int, bool]] = []  # (indent, documented as a whole) of open keys
    for index, line in enumerate(lines):
        match = re.match(r"^(\s*)([A-Za-z][A-Za-z0-9]*):", line)
        if not match:
            continue
        indent = len(match.group(1))
        ancestors = [a for a in ancestors if a[0] < indent]
        above = lines[index - 1].strip() if index else ""
        if not above.startswith("#") and not any(whole for _, whole in ancestors):
            uncommented.append(f"{index + 1}: {match.group(2)}")
        # the comment block above this key: does it open with "# --"?
        j = index - 1
        while j > 0 and lines[j - 1].strip().startswith("#"):
            j -= 1
        ancestors.append((indent, lines[j].strip().startswith("# --") if above else False))
    assert not uncommented


def test_keys_are_camel_case() -> None:
    values = yaml.safe_load(VALUES_TEXT)
    for path in leaf_paths(values):
        for key in path.split("."):
            if "/" in key or "." in key:
                continue  # label keys inside maps
            assert re.fullmatch(r"[a-z][A-Za-z0-9]*", key), path


def schema_node(path: str) -> dict[str, Any] | None:
    node: dict[str, Any] = SCHEMA
    for key in path.split("."):
        props = node.get("properties")
        if props is None:
            return node if node.get("type") == "object" else None
        if key not in props:
            return None
        node = props[key]
    return node


def test_every_value_is_in_the_schema_with_a_description() -> None:
    values = yaml.safe_load(VALUES_TEXT)
    for path in leaf_paths(values):
        node = schema_node(path)
        assert node is not None, f"{path} is not in values.schema.json"
        assert node.get("description") or path.count(".") > 0, path


def test_the_schema_is_strict() -> None:
    def walk(node: dict[str, Any], where: str) -> Iterator[str]:
        if "properties" in node and node.get("additionalProperties") is not False:
            yield where
        for key, sub in node.get("properties", {}).items():
            yield from walk(sub, f"{where}.{key}")
        if isinstance(node.get("items"), dict):
            yield from walk(node["items"], f"{where}[]")

    assert list(walk(SCHEMA, "$")) == ["$.extraEnv[]"]  # env entries take valueFrom & co.
    jsonschema.Draft7Validator.check_schema(SCHEMA)


def test_defaults_and_ci_sets_satisfy_the_schema() -> None:
    validator = jsonschema.Draft7Validator(SCHEMA)
    defaults = yaml.safe_load(VALUES_TEXT)
    assert not [e.message for e in validator.iter_errors(defaults)]
    for name, values in ci_value_sets().items():
        merged = merge(defaults, values)
        assert not [e.message for e in validator.iter_errors(merged)], name


def merge(base: Any, override: Any) -> Any:
    if isinstance(base, dict) and isinstance(override, dict):
        return {
            k: merge(base.get(k), override[k]) if k in base else override[k] for k in override
        } | {k: v for k, v in base.items() if k not in override}
    return override


def test_kube_version_matches_what_ci_validates() -> None:
    chart = yaml.safe_load((CHART_DIR / "Chart.yaml").read_text())
    oldest = KUBERNETES_VERSIONS[0].rsplit(".", 1)[0]
    assert chart["kubeVersion"] == f">={oldest}.0-0"
    assert chart["appVersion"] == "0.1.0" and chart["apiVersion"] == "v2"
