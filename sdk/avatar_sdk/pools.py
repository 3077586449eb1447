"""The AvatarPool resource: warm workers, started and prepared before a session needs one.

An AvatarPool keeps `spec.replicas` idle workers ready: renderer loaded, VRAM reserved, on a GPU.
A session that names the pool (`AvatarSession.spec.poolRef`) claims one idle worker; the claim
is recorded in the API (a conditional patch of the worker Pod's labels and ownerReferences), so
a worker is never claimed twice, also across an operator failover. After its one session the
worker exits and the pool starts a fresh one. Without a ready worker a session starts cold with
the pool's template, or waits in Pending (`spec.whenEmpty`).

The pool's worker Pods carry `POOL_LABEL` (the pool's name) and `POOL_STATE_LABEL` (`starting`,
`ready` or `claimed`); a claimed one also carries `SESSION_LABEL` (its session's name).
`status.selector` selects the pool's idle workers, for the `/scale` subresource (`kubectl scale
avp/default --replicas 3`, or a HorizontalPodAutoscaler).

The models share the style, bounds and helpers of `avatar_sdk.api`; like it, importing this
module pulls only pydantic.
"""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any, Final, Literal

import pydantic
from pydantic import ConfigDict, Field

from avatar_sdk import api
from avatar_sdk.api import (
    HOSTNAME_PATTERN,
    AudioSpec,
    AvatarSpec,
    ConditionStatus,
    ResourcesSpec,
    SpecError,
    Toleration,
    VideoSpec,
    _Model,
    _SpecModel,
    _StatusModel,
)

POOL_KIND: Final = "AvatarPool"
POOL_PLURAL: Final = "avatarpools"
POOL_SINGULAR: Final = "avatarpool"
POOL_SHORT_NAMES: Final = ("avp",)
POOL_CATEGORIES: Final = api.CATEGORIES
GROUP: Final = api.GROUP
VERSION: Final = api.VERSION
API_VERSION: Final = api.API_VERSION

MAX_REPLICAS: Final = 500
DEFAULT_REPLICAS: Final = 1

# Labels of a pool's worker Pods.
POOL_LABEL: Final = f"{api.GROUP}/pool"  # the pool's name
POOL_STATE_LABEL: Final = f"{api.GROUP}/pool-state"  # a PoolWorkerState
SESSION_LABEL: Final = f"{api.GROUP}/session"  # a claimed worker's session (as the operator's)


class PoolWorkerState(enum.StrEnum):
    """Where one of a pool's worker Pods is (its `POOL_STATE_LABEL`)."""

    STARTING = "starting"  # created, not yet ready for a session
    READY = "ready"  # idle and ready: a session may claim it
    CLAIMED = "claimed"  # serving a session, which owns the Pod now


class PoolFallback(enum.StrEnum):
    """What a session naming the pool does when no idle worker is ready."""

    COLD = "Cold"  # start cold, with the pool's template
    WAIT = "Wait"  # wait in Pending until a worker is ready


class PoolConditionType(enum.StrEnum):
    READY = "Ready"  # every wanted idle worker is ready
    PROGRESSING = "Progressing"  # workers are being started or stopped


# ---------------------------------------------------------------------------------------------
# spec


class AvatarPoolTemplate(_SpecModel):
    """The session settings a warm worker is prepared with."""

    avatar: AvatarSpec = Field(
        default_factory=AvatarSpec,
        description="Which renderer draws the avatar, and its assets (as in a session).",
    )
    video: VideoSpec = Field(
        default_factory=VideoSpec,
        description="The video track the workers publish (as in a session).",
    )
    audio: AudioSpec = Field(
        default_factory=AudioSpec,
        description="The agent's TTS audio the workers expect (as in a session).",
    )
    resources: ResourcesSpec = Field(
        default_factory=ResourcesSpec,
        description="What each worker reserves: VRAM on one GPU, and CPU (as in a session).",
    )
    node_selector: api.NodeSelector = Field(
        default_factory=dict,
        max_length=64,  # bounds the CEL rule's cost below kube-apiserver's budget
        description="Only nodes with all these labels host the workers.",
    )
    tolerations: list[Toleration] = Field(
        default_factory=list, max_length=32, description="Taints the workers tolerate."
    )
    signaling_base_url: str | None = Field(
        None,
        max_length=253,
        pattern=HOSTNAME_PATTERN,
        description="The VideoSDK signaling host the workers join through (a host name such "
        "as api.videosdk.live, no scheme). Empty: the VideoSDK SDK's default.",
    )


class AvatarPoolSpec(_SpecModel):
    """How many warm workers to keep, prepared how."""

    template: AvatarPoolTemplate = Field(
        default_factory=AvatarPoolTemplate,
        description="The session settings every worker of the pool is prepared with.",
    )
    replicas: int = Field(
        DEFAULT_REPLICAS,
        ge=0,
        le=MAX_REPLICAS,
        description="Idle, ready workers to keep; a claimed worker is replaced. Driven by the "
        "scale subresource (kubectl scale, a HorizontalPodAutoscaler).",
    )
    when_empty: PoolFallback = Field(
        PoolFallback.COLD,
        description="Without a ready worker, a session naming the pool starts cold with the "
        "template (Cold) or waits in Pending until a worker is ready (Wait).",
    )


# ---------------------------------------------------------------------------------------------
# status


class PoolCondition(api.ConditionOf[PoolConditionType]):
    """The detailed truth about one aspect of the pool, Kubernetes style."""


class AvatarPoolStatus(_StatusModel):
    """What is true now."""

    replicas: int = Field(
        0, ge=0, description="Idle workers that exist (ready and starting), for /scale."
    )
    ready_replicas: int = Field(0, ge=0, description="Idle workers that are ready for a session.")
    starting: int = Field(0, ge=0, description="Idle workers still starting.")
    claimed: int = Field(0, ge=0, description="Workers serving a session now.")
    selector: str | None = Field(
        None, description="Label selector of the pool's idle workers, for /scale."
    )
    observed_generation: int | None = Field(
        None, ge=0, description="The spec generation the operator last acted on."
    )
    conditions: list[PoolCondition] = Field(
        default_factory=list, description="The detailed truth, one condition per aspect."
    )

    def condition(self, type_: PoolConditionType) -> PoolCondition | None:
        return next((c for c in self.conditions if c.type is type_), None)


class AvatarPool(_Model):
    """Warm avatar workers, started and prepared before a session needs one."""

    model_config = ConfigDict(extra="ignore")

    api_version: Literal["avatar-operator.dev/v1alpha1"] = API_VERSION
    kind: Literal["AvatarPool"] = POOL_KIND
    metadata: dict[str, Any] = Field(default_factory=dict)
    spec: AvatarPoolSpec = Field(default_factory=AvatarPoolSpec)
    status: AvatarPoolStatus = Field(default_factory=AvatarPoolStatus)

    @property
    def name(self) -> str:
        return str(self.metadata.get("name", ""))

    @property
    def namespace(self) -> str:
        return str(self.metadata.get("namespace", ""))


# ---------------------------------------------------------------------------------------------
# helpers


def parse_pool_spec(spec: Any) -> AvatarPoolSpec:
    """Validate a pool's spec from the wire; raises api.SpecError naming every bad field."""
    if not isinstance(spec, dict):
        raise SpecError([("spec", f"must be an object, got {type(spec).__name__}")])
    try:
        return AvatarPoolSpec.model_validate(spec)
    except pydantic.ValidationError as exc:
        raise api.describe_validation_error(exc, "spec") from exc


def parse_pool_status(status: Any) -> AvatarPoolStatus:
    """Read a pool's status from the wire; what cannot be read is dropped, never fatal."""
    return api.parse_lenient(AvatarPoolStatus, status)


def idle_selector(pool_name: str) -> str:
    """`status.selector`: the pool's idle (starting or ready) workers."""
    states = ",".join((PoolWorkerState.STARTING.value, PoolWorkerState.READY.value))
    return f"{POOL_LABEL}={pool_name},{POOL_STATE_LABEL} in ({states})"


def workers_selector(pool_name: str) -> str:
    """Every worker Pod of the pool, claimed ones included."""
    return f"{POOL_LABEL}={pool_name}"


def set_pool_condition(
    conditions: list[PoolCondition],
    type_: PoolConditionType,
    status: ConditionStatus | bool,
    reason: str,
    message: str = "",
    *,
    generation: int | None = None,
    at: datetime | None = None,
) -> list[PoolCondition]:
    """`api.set_condition` for a pool's conditions."""
    return api.set_condition_of(
        PoolCondition, conditions, type_, status, reason, message, generation=generation, at=at
    )


# The session fields a pool's template gives a session that names the pool (`spec.poolRef`).
TEMPLATED_FIELDS: Final = (
    "avatar",
    "video",
    "audio",
    "resources",
    "node_selector",
    "tolerations",
    "signaling_base_url",
)


def apply_template(
    spec: api.AvatarSessionSpec, template: AvatarPoolTemplate
) -> tuple[api.AvatarSessionSpec, list[str]]:
    """A session's spec with its pool's template: each templated field the session leaves at
    its default comes from the template (the API server writes the CRD's defaults into every
    spec, so "left at its default" is what "unset" can mean). One the session sets to something
    else that differs from the template's is returned by its wire name (`video`, `nodeSelector`
    …): a warm worker prepared otherwise cannot serve it, and it starts cold with its own
    setting (the others from the template)."""
    update: dict[str, Any] = {}
    differ: list[str] = []
    for field in TEMPLATED_FIELDS:
        info = api.AvatarSessionSpec.model_fields[field]
        value = getattr(spec, field)
        if value == info.get_default(call_default_factory=True):
            update[field] = getattr(template, field)
        elif value != getattr(template, field):
            differ.append(info.alias or field)
    return spec.model_copy(update=update), differ
