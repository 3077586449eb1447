"""Pure builders for a session's children: the token Secret and the worker Pod.

Each returns a plain dict, so it can be unit-tested, diffed and validated against the
Kubernetes schemas without a cluster. The handlers pass the results through `kopf.adopt()`,
which adds the ownerReference that lets Kubernetes' garbage collector delete them with the
session. Names are derived from the session's name, so a create replayed after a restart hits
AlreadyExists instead of making a second Pod.

The worker has no Kubernetes credentials at all (`automountServiceAccountToken: false`): it
reports its state to the operator's status relay (`avatar_operator.relay`) with a per-session
credential from its own Secret, and the operator writes the session's status for it. When the
relay serves TLS, the same Secret holds the relay's CA certificate, the only one the worker
trusts for it.
"""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Protocol

from avatar_operator import settings as settings_mod
from avatar_sdk import api, workerenv
from avatar_sdk.objects import Obj
from avatar_sdk.placement import pinning

MANAGED_BY = "avatar-operator"
LABEL_SESSION = f"{api.GROUP}/session"
LABEL_SESSION_UID = f"{api.GROUP}/session-uid"
ANNOTATION_PLACEMENT = f"{api.GROUP}/placement"
ANNOTATION_RESTARTS = f"{api.GROUP}/restart"
WORKER_CONTAINER = "worker"
WORKER_UID = 10001  # the non-root user of worker-image/Dockerfile
SELECTOR = f"app.kubernetes.io/managed-by={MANAGED_BY},app.kubernetes.io/name=avatar-worker"


def secret_name(session_name: str) -> str:
    return f"{session_name}-token"


def caller_token_secret_name(session_name: str) -> str:
    """The Secret the dispatcher keeps a caller-signed join token in (owned by the session)."""
    return f"{session_name}-caller-token"


def pod_name(session_name: str, restart: int = 0) -> str:
    return f"{session_name}-worker" if restart == 0 else f"{session_name}-worker-{restart}"


def restart_in_name(session_name: str, pod: str) -> int:
    """The restart count a worker Pod's name says (`pod_name`'s inverse; 0 when it says none)."""
    suffix = pod.removeprefix(f"{session_name}-worker-")
    return int(suffix) if suffix != pod and suffix.isdigit() else 0


def _label_value(value: str) -> str:
    """Label values are at most 63 characters: long names are shortened with a hash."""
    if len(value) <= 63:
        return value
    return value[:54] + "-" + hashlib.sha256(value.encode()).hexdigest()[:8]


def labels(session: Obj) -> dict[str, str]:
    meta = session["metadata"]
    return {
        "app.kubernetes.io/name": "avatar-worker",
        "app.kubernetes.io/managed-by": MANAGED_BY,
        "app.kubernetes.io/part-of": "avatar-operator",
        LABEL_SESSION: _label_value(meta["name"]),
        LABEL_SESSION_UID: meta.get("uid", ""),
    }


def local_room_url(template: str | None, room_id: str) -> str | None:
    """The local room server's URL for a room: `{roomId}` in the setting is the room's id
    (one server serves every session's room, as VideoSDK does)."""
    return template.replace("{roomId}", room_id) if template else template


def _secret(session: Obj, name: str, data: dict[str, str]) -> Obj:
    """An Opaque Secret in the session's namespace with its labels; `data` base64-encoded."""
    meta = session["metadata"]
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": {"name": name, "namespace": meta["namespace"], "labels": labels(session)},
        "data": {k: base64.b64encode(v.encode()).decode() for k, v in data.items()},
    }


def token_secret(
    session: Obj, *, join_token: str, status_token: str, status_ca: str | None = None
) -> Obj:
    """The Secret the worker mounts: its room-scoped join token, its status credential, and
    the status relay's CA certificate (PEM) when the relay serves TLS."""
    data = {workerenv.TOKEN_KEY: join_token, workerenv.STATUS_TOKEN_KEY: status_token}
    if status_ca is not None:
        data[workerenv.STATUS_CA_KEY] = status_ca
    return _secret(session, secret_name(session["metadata"]["name"]), data)


def secret_value(secret: Obj, key: str) -> str | None:
    """One value of a Secret read from the API (its `data` is base64), or None."""
    raw = (secret.get("data") or {}).get(key)
    return base64.b64decode(raw).decode().strip() if raw else None


def caller_token_secret(session: Obj, token: str) -> Obj:
    """The Secret `/launch` keeps the caller's join token in, owned by (and deleted with) the
    session it was made for (`credentials.tokenSecretRef` names it)."""
    meta = session["metadata"]
    secret = _secret(session, caller_token_secret_name(meta["name"]), {"token": token})
    secret["metadata"]["ownerReferences"] = [
        {
            "apiVersion": api.API_VERSION,
            "kind": api.KIND,
            "name": meta["name"],
            "uid": meta["uid"],
            "controller": True,
            "blockOwnerDeletion": True,
        }
    ]
    return secret


def worker_pod(
    session: Obj,
    spec: api.AvatarSessionSpec,
    placement: api.Placement | None,
    *,
    participant_id: str,
    settings: settings_mod.OperatorSettings,
    status_url: str | None,
    status_ca: bool = False,
    restart: int = 0,
) -> Obj:
    """The worker Pod: pinned to its node and GPU, hardened, with its settings as env.

    Without a placement (`gpu: none`) the Kubernetes scheduler picks the node. `status_ca`:
    the session's Secret holds the relay's CA certificate (`token_secret(status_ca=…)`).
    """
    meta = session["metadata"]
    name = meta["name"]
    model = api.AvatarSession(metadata=meta, spec=spec)
    worker_settings = workerenv.WorkerSettings.for_session(
        model,
        participant_id,
        transport=settings.worker_transport,
        local_room_url=local_room_url(settings.worker_local_room_url, spec.room_id),
        status_url=status_url,
        status_reporting="api" if status_url else "none",
        status_ca_file=f"{workerenv.TOKEN_DIR}/{workerenv.STATUS_CA_KEY}" if status_ca else None,
    )
    return build_worker_pod(
        name=pod_name(name, restart),
        namespace=meta["namespace"],
        labels=labels(session),
        annotations={ANNOTATION_RESTARTS: str(restart)},
        worker_settings=worker_settings,
        secret=secret_name(name),
        secret_keys=(
            workerenv.TOKEN_KEY,
            workerenv.STATUS_TOKEN_KEY,
            *([workerenv.STATUS_CA_KEY] if status_ca else []),
        ),
        template=spec,
        placement=placement,
        settings=settings,
    )


class PodTemplate(Protocol):
    """What a worker Pod is made from: a session's spec, or a warm pool's template."""

    @property
    def avatar(self) -> api.AvatarSpec: ...
    @property
    def resources(self) -> api.ResourcesSpec: ...
    @property
    def node_selector(self) -> dict[str, str]: ...
    @property
    def tolerations(self) -> list[api.Toleration]: ...


def build_worker_pod(
    *,
    name: str,
    namespace: str,
    labels: dict[str, str],
    annotations: dict[str, str],
    worker_settings: workerenv.CommonSettings,
    secret: str,
    secret_keys: tuple[str, ...],
    template: PodTemplate,
    placement: api.Placement | None,
    settings: settings_mod.OperatorSettings,
) -> Obj:
    """A hardened worker Pod pinned to its placement: a session's or a warm pool's (its
    settings as env, its Secret's `secret_keys` mounted at `workerenv.TOKEN_DIR`)."""
    spec = template
    env: list[Obj] = [{"name": k, "value": v} for k, v in sorted(worker_settings.to_env().items())]

    requests: dict[str, str] = {
        "cpu": spec.resources.cpu or settings.worker_cpu,
        "memory": spec.resources.memory or settings.worker_memory,
    }
    limits: dict[str, str] = {}
    if settings.worker_cpu_limit:
        limits["cpu"] = settings.worker_cpu_limit
    if settings.worker_memory_limit:
        limits["memory"] = spec.resources.memory or settings.worker_memory_limit

    mounts: list[Obj] = [
        {"name": "token", "mountPath": workerenv.TOKEN_DIR, "readOnly": True},
        {"name": "tmp", "mountPath": "/tmp"},
    ]
    volumes: list[Obj] = [
        {
            "name": "token",
            "secret": {
                "secretName": secret,
                "defaultMode": 0o440,
                "items": [{"key": key, "path": key} for key in secret_keys],
            },
        },
        {"name": "tmp", "emptyDir": {"medium": "Memory", "sizeLimit": "256Mi"}},
    ]
    volume = spec.avatar.volume
    if volume is not None:
        mounts.append({"name": "assets", "mountPath": volume.mount_path, "readOnly": True})
        source: Obj = (
            {
                "persistentVolumeClaim": {
                    "claimName": volume.persistent_volume_claim,
                    "readOnly": True,
                }
            }
            if volume.persistent_volume_claim
            else {"configMap": {"name": volume.config_map}}
        )
        volumes.append({"name": "assets", **source})

    tolerations: list[Obj] = [t.to_wire() for t in spec.tolerations]
    if placement is not None and placement.gpu is not None:
        # GPU nodes are commonly tainted nvidia.com/gpu:NoSchedule
        tolerations.append({"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"})

    health_port = worker_settings.health_port
    container: Obj = {
        "name": WORKER_CONTAINER,
        "image": settings.worker_image,
        "imagePullPolicy": settings.worker_image_pull_policy,
        "command": list(settings.worker_command),
        "env": env,
        "resources": {"requests": requests, **({"limits": limits} if limits else {})},
        "volumeMounts": mounts,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": WORKER_UID,
            "runAsGroup": WORKER_UID,
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "privileged": False,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "ports": [{"name": "health", "containerPort": health_port, "protocol": "TCP"}],
        # alive: the media loop is turning; ready: joined and publishing
        "livenessProbe": {
            "httpGet": {"path": "/healthz", "port": "health"},
            "periodSeconds": 10,
            "timeoutSeconds": 2,
            "failureThreshold": 3,
        },
        "readinessProbe": {
            "httpGet": {"path": "/readyz", "port": "health"},
            "periodSeconds": 2,
            "timeoutSeconds": 1,
            "failureThreshold": 2,
        },
        "startupProbe": {
            "httpGet": {"path": "/healthz", "port": "health"},
            "periodSeconds": 2,
            "failureThreshold": 60,  # model loading may take a while
        },
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }

    pod_spec: Obj = {
        "restartPolicy": "Never",  # the operator decides about restarts (bounded)
        "automountServiceAccountToken": False,  # the worker never talks to the API
        "enableServiceLinks": False,
        "terminationGracePeriodSeconds": 10,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": WORKER_UID,
            "runAsGroup": WORKER_UID,
            "fsGroup": WORKER_UID,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [container],
        "volumes": volumes,
    }
    if spec.node_selector:
        pod_spec["nodeSelector"] = dict(spec.node_selector)
    if tolerations:
        pod_spec["tolerations"] = tolerations
    if settings.worker_priority_class:
        pod_spec["priorityClassName"] = settings.worker_priority_class

    pod: Obj = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": labels,
            "annotations": {
                **annotations,
                **(
                    {ANNOTATION_PLACEMENT: json.dumps(placement.to_wire(), sort_keys=True)}
                    if placement is not None
                    else {}
                ),
            },
        },
        "spec": pod_spec,
    }
    # node affinity, NVIDIA_VISIBLE_DEVICES (or an nvidia.com/gpu request): placement's rules
    gpu = pinning.pinning_for(
        placement,
        pinning.PinningMode(settings.gpu_pinning),
        runtime_class=settings.worker_runtime_class,
    )
    return pinning.apply(pod, gpu, container=WORKER_CONTAINER)


def placement_from_pod(pod: Obj) -> api.Placement | None:
    """The placement a worker Pod was created with (it outlives a crash before status)."""
    raw = ((pod.get("metadata") or {}).get("annotations") or {}).get(ANNOTATION_PLACEMENT)
    if not raw:
        return None
    try:
        return api.Placement.model_validate(json.loads(raw))
    except ValueError:
        return None


def event(session: Obj, *, type_: str, reason: str, message: str, now: str) -> Obj:
    """A core/v1 Event about a session (or a pool: the body's kind); the message never
    carries a token."""
    meta = session["metadata"]
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
        "involvedObject": {
            "apiVersion": api.API_VERSION,
            "kind": session.get("kind") or api.KIND,
            "name": meta["name"],
            "namespace": meta["namespace"],
            "uid": meta.get("uid", ""),
        },
        "type": type_,
        "reason": reason,
        "message": message[:1024],
        "firstTimestamp": now,
        "lastTimestamp": now,
        "count": 1,
        "source": {"component": MANAGED_BY},
        "reportingComponent": MANAGED_BY,
    }
