"""The operator as the chart's ServiceAccount, and nothing else: the chart's RBAC rendered by
`helm template` and applied, then a kubeconfig holding only a token of that ServiceAccount.

A process started with that kubeconfig has exactly the rights a user's installed operator has:
every call it makes is decided by kube-apiserver's RBAC against the chart's own Roles.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from avatar_devtools.realcluster.cluster import Cluster

REPO = Path(__file__).resolve().parents[3]
CHART = REPO / "charts" / "avatar-operator"
RBAC_TEMPLATES = (
    "templates/serviceaccount.yaml",
    "templates/clusterrole.yaml",
    "templates/clusterrolebinding.yaml",
    "templates/role.yaml",
    "templates/rolebinding.yaml",
)
DISPATCHER_TEMPLATES = ("templates/dispatcher-role.yaml", "templates/dispatcher-rolebinding.yaml")


def apply_chart_rbac(
    cluster: Cluster,
    *,
    release: str,
    namespace: str,
    values: dict[str, str] | None = None,
) -> None:
    """Renders the chart's ServiceAccount, (Cluster)Roles and bindings for `release` in
    `namespace` (which must exist) and applies them; the dispatcher's Role too where
    `values` set `dispatcher.enabled=true`."""
    args = ["template", release, str(CHART), "--namespace", namespace]
    templates = list(RBAC_TEMPLATES)
    if (values or {}).get("dispatcher.enabled") == "true":
        templates += DISPATCHER_TEMPLATES
    for template in templates:
        args += ["--show-only", template]
    for key, value in (values or {}).items():
        args += ["--set", f"{key}={value}"]
    rendered = cluster.helm(*args).stdout
    cluster.kubectl("apply", "-f", "-", input=rendered)


def service_account_kubeconfig(
    cluster: Cluster,
    namespace: str,
    service_account: str,
    path: Path,
    *,
    duration: str = "2h",
    context_namespace: str | None = None,
) -> Path:
    """A kubeconfig at `path` holding only a token of `namespace/service_account` (its
    context's namespace: `context_namespace`, or none)."""
    token = cluster.kubectl(
        "-n", namespace, "create", "token", service_account, f"--duration={duration}"
    ).stdout.strip()
    admin = yaml.safe_load(cluster.kubeconfig.read_text())
    server = admin["clusters"][0]["cluster"]
    context = {"cluster": "real", "user": service_account}
    if context_namespace:
        context["namespace"] = context_namespace
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "real", "cluster": server}],
        "users": [{"name": service_account, "user": {"token": token}}],
        "contexts": [{"name": "sa", "context": context}],
        "current-context": "sa",
    }
    path.write_text(yaml.safe_dump(config))
    path.chmod(0o600)
    return path


def token_of(kubeconfig: Path) -> str:
    config = yaml.safe_load(kubeconfig.read_text())
    return str(config["users"][0]["user"]["token"])
