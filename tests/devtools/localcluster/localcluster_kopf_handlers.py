"""kopf handlers for the localcluster fidelity tests (a module: kopf registers on import).

Sync handlers: kopf runs them in its thread pool, so the blocking `kubernetes` client is safe
here even though the API server runs on the operator's own event loop.
"""

from __future__ import annotations

from typing import Any

import kopf
import kubernetes
from localcluster_helpers import WIDGET_GROUP


@kopf.on.create(WIDGET_GROUP, "v1", "widgets")
def create_child(
    spec: kopf.Spec,
    name: str,
    namespace: str,
    body: kopf.Body,
    patch: kopf.Patch,
    memo: kopf.Memo,
    **_: Any,
) -> None:
    child: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": f"{name}-child"},
        "data": {"size": str(spec["size"])},
    }
    kopf.adopt(child, owner=body)
    core = kubernetes.client.CoreV1Api(memo.api)
    try:
        core.create_namespaced_config_map(namespace, child)
    except kubernetes.client.ApiException as e:
        if e.status != 409:
            raise
    patch.status["phase"] = "Created"
    patch.status["children"] = 1
    memo.created.append(name)


@kopf.on.update(WIDGET_GROUP, "v1", "widgets", field="spec.size")
def resize(name: str, namespace: str, new: Any, body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    custom = kubernetes.client.CustomObjectsApi(memo.api)
    stale = dict(body)
    # The object moved on since kopf read it (kopf writes its own annotations): a replace with
    # the old resourceVersion must be refused as a conflict, and the handler sees that.
    custom.patch_namespaced_custom_object(
        WIDGET_GROUP, "v1", namespace, "widgets", name, {"metadata": {"labels": {"touched": "yes"}}}
    )
    try:
        custom.replace_namespaced_custom_object(
            WIDGET_GROUP, "v1", namespace, "widgets", name, stale
        )
    except kubernetes.client.ApiException as e:
        memo.conflicts.append(e.status)
    memo.resized.append((name, new))


@kopf.on.delete(WIDGET_GROUP, "v1", "widgets")
def say_goodbye(name: str, memo: kopf.Memo, **_: Any) -> None:
    memo.deleted.append(name)
