"""Pure builders for a warm pool's children: a worker's Secret and Pod, and the claim patch.

A pool worker is a worker Pod like a session's (`avatar_operator.manifests.build_worker_pod`:
hardened, pinned to its GPU, no Kubernetes credentials), made from the pool's template, owned
by the pool, with the pool's labels (`avatar_sdk.pools.POOL_LABEL`, `POOL_STATE_LABEL`). Its
Secret (same name as the Pod, owned by the pool) holds only its pool credential and the relay's
CA: its join token comes with its assignment. The claim is one conditional merge patch of the
Pod: state `claimed`, the session's labels, and the session as its only owner — so the API
server, not the operator's memory, decides that a worker is claimed once.
"""

from __future__ import annotations

import base64
import secrets
import string

from avatar_operator import manifests
from avatar_operator import settings as settings_mod
from avatar_sdk import api, assignment, pools, workerenv
from avatar_sdk.objects import Obj

ANNOTATION_READY_AT = f"{api.GROUP}/ready-at"  # when the worker first asked for its session
_SUFFIX = string.ascii_lowercase + string.digits


def worker_name(pool_name: str) -> str:
    """A fresh name: the pool's, and a random suffix (as `generateName` would make)."""
    suffix = "".join(secrets.choice(_SUFFIX) for _ in range(6))
    return f"{pool_name[:56]}-{suffix}"


def reservation_key(namespace: str, worker: str) -> str:
    """The placement ledger's key of an idle worker (sessions' keys are `namespace/name`)."""
    return f"pool:{namespace}/{worker}"


def owner_reference(body: Obj, kind: str) -> Obj:
    meta = body["metadata"]
    return {
        "apiVersion": api.API_VERSION,
        "kind": kind,
        "name": meta["name"],
        "uid": meta.get("uid", ""),
        "controller": True,
        "blockOwnerDeletion": True,
    }


def labels(pool: Obj, state: pools.PoolWorkerState) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "avatar-worker",
        "app.kubernetes.io/managed-by": manifests.MANAGED_BY,
        "app.kubernetes.io/part-of": "avatar-operator",
        pools.POOL_LABEL: pool["metadata"]["name"],
        pools.POOL_STATE_LABEL: state.value,
    }


def state_of(obj: Obj) -> pools.PoolWorkerState | None:
    """The pool state a Pod's label says; None for a session's own worker (not a pool's)."""
    meta_labels = (obj.get("metadata") or {}).get("labels") or {}
    if pools.POOL_LABEL not in meta_labels:
        return None
    try:
        return pools.PoolWorkerState(meta_labels.get(pools.POOL_STATE_LABEL, ""))
    except ValueError:
        return pools.PoolWorkerState.STARTING


def is_gone(pod: Obj) -> bool:
    """Deleted, being deleted, or its process has exited."""
    return is_deleting(pod) or has_finished(pod)


def has_finished(pod: Obj) -> bool:
    """Its containers have exited for good (the Pod Failed or Succeeded)."""
    return (pod.get("status") or {}).get("phase") in ("Failed", "Succeeded")


def is_deleting(pod: Obj) -> bool:
    """Its deletion has begun (graceful: it may still run)."""
    return bool((pod.get("metadata") or {}).get("deletionTimestamp"))


def pool_of(obj: Obj) -> str | None:
    return ((obj.get("metadata") or {}).get("labels") or {}).get(pools.POOL_LABEL)


def worker_secret(pool: Obj, worker: str, *, token: str, status_ca: str | None) -> Obj:
    """The worker's pool credential (and the relay's CA), owned by the pool."""
    data = {assignment.POOL_TOKEN_KEY: token}
    if status_ca is not None:
        data[workerenv.STATUS_CA_KEY] = status_ca
    meta = pool["metadata"]
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": {
            "name": worker,
            "namespace": meta["namespace"],
            "labels": labels(pool, pools.PoolWorkerState.STARTING),
            "ownerReferences": [owner_reference(pool, pools.POOL_KIND)],
        },
        "data": {k: base64.b64encode(v.encode()).decode() for k, v in data.items()},
    }


def worker_pod(
    pool: Obj,
    spec: pools.AvatarPoolSpec,
    worker: str,
    placement: api.Placement | None,
    *,
    settings: settings_mod.OperatorSettings,
    status_url: str,
    status_ca: bool,
) -> Obj:
    """A warm worker of `pool`: its template's renderer, waiting for a session."""
    meta = pool["metadata"]
    model = pools.AvatarPool(metadata=meta, spec=spec)
    worker_settings = workerenv.PoolWorkerSettings.for_pool(
        model,
        worker,
        transport=settings.worker_transport,
        status_url=status_url,
        status_ca_file=f"{workerenv.TOKEN_DIR}/{workerenv.STATUS_CA_KEY}" if status_ca else None,
    )
    pod = manifests.build_worker_pod(
        name=worker,
        namespace=meta["namespace"],
        labels=labels(pool, pools.PoolWorkerState.STARTING),
        annotations={manifests.ANNOTATION_RESTARTS: "0"},
        worker_settings=worker_settings,
        secret=worker,
        secret_keys=(
            assignment.POOL_TOKEN_KEY,
            *([workerenv.STATUS_CA_KEY] if status_ca else []),
        ),
        template=spec.template,
        placement=placement,
        settings=settings,
    )
    pod["metadata"]["ownerReferences"] = [owner_reference(pool, pools.POOL_KIND)]
    return pod


def ready_patch(pod: Obj, at: str) -> Obj:
    """starting → ready, only if the Pod is unchanged since it was read."""
    return {
        "metadata": {
            "resourceVersion": pod["metadata"]["resourceVersion"],
            "labels": {pools.POOL_STATE_LABEL: pools.PoolWorkerState.READY.value},
            "annotations": {ANNOTATION_READY_AT: at},
        }
    }


def claim_patch(pod: Obj, session: Obj) -> Obj:
    """ready → claimed by `session`, only if the Pod is unchanged since it was read (the API
    server answers 409 Conflict to a second claimer): the session's labels, and the session
    as the Pod's only owner (the pool stops counting it; deleting the session deletes it)."""
    session_labels = manifests.labels(session)
    return {
        "metadata": {
            "resourceVersion": pod["metadata"]["resourceVersion"],
            "labels": {
                pools.POOL_STATE_LABEL: pools.PoolWorkerState.CLAIMED.value,
                manifests.LABEL_SESSION: session_labels[manifests.LABEL_SESSION],
                manifests.LABEL_SESSION_UID: session_labels[manifests.LABEL_SESSION_UID],
            },
            "ownerReferences": [owner_reference(session, api.KIND)],
        }
    }
