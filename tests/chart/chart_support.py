"""Rendering the chart with the real Helm SDK, and reading what comes out."""

from __future__ import annotations

import functools
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from helm_python import Chart

REPO_ROOT = Path(__file__).resolve().parents[2]
CHART_DIR = REPO_ROOT / "charts" / "avatar-operator"
CI_DIR = CHART_DIR / "ci"
# The oldest and newest Kubernetes the chart supports (Chart.yaml kubeVersion, the README).
KUBERNETES_VERSIONS = ("1.29.0", "1.37.0")
RELEASE = "avatar-operator"
NAMESPACE = "avatar-system"

Obj = dict[str, Any]


@functools.cache
def chart() -> Chart:
    return Chart.load(CHART_DIR)


def ci_value_sets() -> dict[str, Obj]:
    """Helm's convention: every ci/*-values.yaml is a value set CI renders and lints."""
    return {
        path.name: yaml.safe_load(path.read_text()) or {} for path in sorted(CI_DIR.glob("*.yaml"))
    }


def value_sets() -> dict[str, Obj]:
    return {"default": {}, **ci_value_sets()}


@dataclass
class Rendered:
    objects: list[Obj]
    notes: str

    def of_kind(self, kind: str) -> list[Obj]:
        return [o for o in self.objects if o["kind"] == kind]

    def one(self, kind: str, name: str | None = None) -> Obj:
        found = [o for o in self.of_kind(kind) if name is None or o["metadata"]["name"] == name]
        assert len(found) == 1, f"{len(found)} {kind} named {name}"
        return found[0]

    def named(self, kind: str, name: str) -> Obj | None:
        return next((o for o in self.of_kind(kind) if o["metadata"]["name"] == name), None)

    def pod_specs(self) -> Iterator[tuple[str, Obj]]:
        """(object name, pod spec) of every workload and Pod, the Helm test pod included."""
        for obj in self.objects:
            if obj["kind"] == "Pod":
                yield obj["metadata"]["name"], obj["spec"]
            elif obj["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
                yield obj["metadata"]["name"], obj["spec"]["template"]["spec"]


def render(
    values: Obj | None = None, *, name: str = RELEASE, namespace: str = NAMESPACE
) -> Rendered:
    """Every object the chart renders (templates/, the Helm test hook included) and NOTES."""
    out = chart().render(values or {}, name=name, namespace=namespace, is_install=True)
    objects: list[Obj] = []
    notes = ""
    for path, text in sorted(out.items()):
        if path.endswith("NOTES.txt"):
            notes = text
            continue
        objects += [doc for doc in yaml.safe_load_all(text) if doc]
    return Rendered(objects, notes)


def operator_env(rendered: Rendered) -> dict[str, str]:
    """The operator container's environment, with what Kubernetes fills in filled in."""
    deployment = rendered.one("Deployment", f"{RELEASE}")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    env: dict[str, str] = {}
    for var in container["env"]:
        if "value" in var:
            env[var["name"]] = var["value"]
        elif "fieldRef" in var.get("valueFrom", {}):
            env[var["name"]] = "avatar-operator-7d9f8-abcde"
        else:
            env[var["name"]] = "0123456789abcdef0123456789abcdef"  # a Secret's key
    return env
