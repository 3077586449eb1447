"""Where the client finds its Kubernetes configuration, as kubectl does.

In a Pod, the ServiceAccount mounted at `SERVICE_ACCOUNT_DIR` (and its namespace); elsewhere a
kubeconfig, `$KUBECONFIG` or `~/.kube/config`, and the namespace of its current (or named)
context. Explicit arguments pick a kubeconfig even in a Pod. Files are read in a worker thread,
so loading never blocks the agent's event loop; what cannot be used is an `ApiUnavailable` that
says what to set.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any, Final

from kubernetes_asyncio import client as k8s
from kubernetes_asyncio import config as k8s_config

from avatar_sdk.errors import ApiUnavailable

SERVICE_ACCOUNT_DIR: Final = Path("/var/run/secrets/kubernetes.io/serviceaccount")


async def load_api_client(
    kubeconfig: str | os.PathLike[str] | None = None,
    context: str | None = None,
    *,
    service_account_dir: Path = SERVICE_ACCOUNT_DIR,
) -> tuple[Any, str]:
    """An `ApiClient` and the namespace its configuration names.

    Explicit arguments pick a kubeconfig; otherwise the Pod's ServiceAccount when running in a
    cluster; otherwise `$KUBECONFIG` or `~/.kube/config`. Files are read in a worker thread.
    """
    if kubeconfig is None and context is None:
        in_cluster = await asyncio.to_thread(_in_cluster_configuration, service_account_dir)
        if in_cluster is not None:
            configuration, namespace = in_cluster
            return k8s.ApiClient(configuration=configuration), namespace
    path, namespace = await asyncio.to_thread(_kubeconfig_namespace, kubeconfig, context)
    try:
        api_client = await k8s_config.new_client_from_config(
            config_file=path, context=context, persist_config=False
        )
    except (k8s_config.ConfigException, OSError, ValueError) as exc:
        raise ApiUnavailable(f"cannot load the kubeconfig {path}: {exc}") from exc
    return api_client, namespace


def _in_cluster_configuration(service_account_dir: Path) -> tuple[Any, str] | None:
    """The Pod's ServiceAccount configuration and namespace; None outside a Pod."""
    token = service_account_dir / "token"
    if not os.environ.get("KUBERNETES_SERVICE_HOST") or not token.exists():
        return None
    configuration = k8s.Configuration()
    try:
        k8s_config.load_incluster_config(  # type: ignore[no-untyped-call]  # untyped upstream
            client_configuration=configuration,
            token_filename=str(token),
            cert_filename=str(service_account_dir / "ca.crt"),
        )
    except k8s_config.ConfigException as exc:
        raise ApiUnavailable(f"cannot use the Pod's ServiceAccount: {exc}") from exc
    namespace_file = service_account_dir / "namespace"
    namespace = (
        namespace_file.read_text(encoding="utf-8").strip() if namespace_file.exists() else ""
    )
    return configuration, namespace or "default"


def _kubeconfig_namespace(
    kubeconfig: str | os.PathLike[str] | None, context: str | None
) -> tuple[str, str]:
    """The kubeconfig to load and the namespace of its (current or named) context."""
    path = os.fspath(kubeconfig) if kubeconfig is not None else os.environ.get("KUBECONFIG")
    if not path:
        home = Path("~/.kube/config").expanduser()
        if not home.exists():
            raise ApiUnavailable(
                "no Kubernetes configuration: not running in a Pod and no kubeconfig "
                "(set KUBECONFIG, or pass kubeconfig=... / --kubeconfig)"
            )
        path = str(home)
    if os.pathsep not in path and not Path(path).exists():
        raise ApiUnavailable(f"cannot load the kubeconfig {path}: the file does not exist")
    try:
        contexts, current = k8s_config.list_kube_config_contexts(config_file=path)
    except (k8s_config.ConfigException, OSError, ValueError) as exc:
        raise ApiUnavailable(f"cannot load the kubeconfig {path}: {exc}") from exc
    chosen = next((c for c in contexts if c.get("name") == context), None) if context else current
    if context and chosen is None:
        raise ApiUnavailable(f"the kubeconfig {path} has no context {context!r}")
    namespace = ((chosen or {}).get("context") or {}).get("namespace") or "default"
    return path, str(namespace)
