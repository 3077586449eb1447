"""`helm lint --strict` is clean for the defaults and every ci/ value set, on the oldest and
newest Kubernetes the chart supports."""

from __future__ import annotations

import pytest
from chart_support import CHART_DIR, KUBERNETES_VERSIONS, value_sets
from helm_python import lint

VALUE_SETS = value_sets()
# Informational only: the project has no icon to point at.
ACCEPTED = [{"severity": 1, "path": "Chart.yaml", "error": "icon is recommended"}]


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("value_set", sorted(VALUE_SETS))
def test_lint_strict_is_clean(value_set: str, version: str) -> None:
    report = lint(
        CHART_DIR,
        VALUE_SETS[value_set],
        strict=True,
        namespace="avatar-system",
        kube_version=f"v{version}",
    )
    assert report["errors"] == []
    assert report["messages"] == ACCEPTED
