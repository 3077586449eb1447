"""The AvatarSession resource: the single source of truth for its shape.

The pydantic models here are what the operator, the worker, the agent client and the CRD
generator (`avatar_sdk.crd`) all read. Attribute names are snake_case; on the wire (Kubernetes
JSON/YAML) every field is camelCase through aliases, and the models accept either.

Everything a CRD schema can say (types, bounds, enums, patterns) is said in the field
declarations, so the API server refuses a bad spec before the operator ever sees it. Rules that
span fields (the model renderer needs a model path; `gpu: none` takes no VRAM) are model
validators here and CEL rules (`x-kubernetes-validations`) in the CRD.

Importing this module pulls only pydantic: the operator, worker and agent all depend on it.
"""

from __future__ import annotations

import enum
import hashlib
import re
from datetime import datetime
from typing import Annotated, Any, Final, Generic, Literal, TypeVar

import pydantic
from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from avatar_sdk import timestamps

GROUP: Final = "avatar-operator.dev"
VERSION: Final = "v1alpha1"
API_VERSION: Final = "avatar-operator.dev/v1alpha1"
KIND: Final = "AvatarSession"
PLURAL = "avatarsessions"
SINGULAR = "avatarsession"
SHORT_NAMES = ("avs",)
CATEGORIES = ("avatars",)

# Defaults that the operator applies when the spec leaves a field empty.
DEFAULT_VRAM_MIB = 2048  # renderer + the worker's CUDA context (~612 MiB on an H200)
DEFAULT_WIDTH = 512
DEFAULT_HEIGHT = 512
DEFAULT_FPS = 30
DEFAULT_SAMPLE_RATE: Final = 24_000  # Hz: what VideoSDK's TTS plugins emit
MAX_PIXELS = 1920 * 1080
SUPPORTED_SAMPLE_RATES = (16_000, 22_050, 24_000, 44_100, 48_000)

# VideoSDK room ids are "abcd-efgh-ijkl"; custom room ids allow letters, digits, - and _.
ROOM_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]*$"
PARTICIPANT_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"
# A Kubernetes DNS-1123 label (names of AvatarPools and Services).
DNS_LABEL_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
# A Kubernetes DNS-1123 subdomain (Secret, PVC and ConfigMap names).
DNS_SUBDOMAIN_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
SECRET_KEY_PATTERN = r"^[-._a-zA-Z0-9]+$"
# A host name with an optional port, no scheme or path (VideoSDK's signaling_base_url).
HOSTNAME_PATTERN = r"^[A-Za-z0-9]([-A-Za-z0-9]*[A-Za-z0-9])?(\.[A-Za-z0-9]([-A-Za-z0-9]*[A-Za-z0-9])?)*(:[0-9]{1,5})?$"  # noqa: E501
QUANTITY_PATTERN = r"^[0-9]+(\.[0-9]+)?(m|k|M|G|T|Ki|Mi|Gi|Ti)?$"
# An absolute path with no ".." segment (no look-ahead: Kubernetes and pydantic differ there).
ASSET_PATH_PATTERN = r"^(/([^/]*[^/.][^/]*|\.|\.{3,}))+$"
LABEL_KEY_PATTERN = r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$"  # noqa: E501
CONDITION_REASON_PATTERN = r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$"


class _Model(BaseModel):
    """Base of every wire model: camelCase aliases, either name accepted."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        use_enum_values=False,
        validate_default=True,
    )

    def to_wire(self) -> dict[str, Any]:
        """The camelCase JSON form, without unset optional fields."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


class _SpecModel(_Model):
    """Spec parts refuse unknown fields: a typo must not silently become a default."""

    model_config = ConfigDict(extra="forbid")


class _StatusModel(_Model):
    """Status parts ignore unknown fields: a newer operator may write more than we know."""

    model_config = ConfigDict(extra="ignore")


class Renderer(enum.StrEnum):
    """Which renderer draws the avatar."""

    PORTRAIT = "portrait"
    WAVEFORM = "waveform"
    MODEL = "model"


class GpuMode(enum.StrEnum):
    """How the session uses a GPU."""

    SHARED = "shared"
    EXCLUSIVE = "exclusive"
    NONE = "none"


class Phase(enum.StrEnum):
    """One-word summary of where a session is in its life."""

    PENDING = "Pending"
    SCHEDULED = "Scheduled"
    STARTING = "Starting"
    JOINED = "Joined"
    ENDED = "Ended"
    FAILED = "Failed"

    @property
    def finished(self) -> bool:
        return self in (Phase.ENDED, Phase.FAILED)


class ConditionType(enum.StrEnum):
    SCHEDULED = "Scheduled"
    TOKEN_ISSUED = "TokenIssued"
    POD_READY = "PodReady"
    JOINED = "Joined"
    SPEAKING = "Speaking"
    ENDED = "Ended"


class ConditionStatus(enum.StrEnum):
    TRUE = "True"
    FALSE = "False"
    UNKNOWN = "Unknown"


class EndReason(enum.StrEnum):
    """Why a session ended; each way out of a session has its own."""

    ROOM_ENDED = "RoomEnded"  # the meeting closed
    AGENT_LEFT = "AgentLeft"  # the agent participant left the room
    JOIN_TIMEOUT = "JoinTimeout"
    MAX_DURATION = "MaxDuration"
    IDLE_TIMEOUT = "IdleTimeout"
    POD_FAILED = "PodFailed"
    NODE_LOST = "NodeLost"
    INVALID_SPEC = "InvalidSpec"
    DELETED = "Deleted"
    ERROR = "Error"


class PlaybackState(enum.StrEnum):
    IDLE = "Idle"
    SPEAKING = "Speaking"


# ---------------------------------------------------------------------------------------------
# spec


class AvatarVolume(_SpecModel):
    """A volume holding the avatar's assets (portrait, model weights), mounted read-only."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "has(self.persistentVolumeClaim) != has(self.configMap)",
                    "message": "set exactly one of persistentVolumeClaim or configMap",
                }
            ]
        }
    )

    persistent_volume_claim: (
        Annotated[str, Field(max_length=253, pattern=DNS_SUBDOMAIN_PATTERN)] | None
    ) = Field(None, description="Name of a PersistentVolumeClaim in the session's namespace.")
    config_map: Annotated[str, Field(max_length=253, pattern=DNS_SUBDOMAIN_PATTERN)] | None = Field(
        None, description="Name of a ConfigMap in the session's namespace."
    )
    mount_path: str = Field(
        "/var/lib/avatar",
        max_length=512,
        pattern=ASSET_PATH_PATTERN,
        description="Where the volume is mounted in the worker (read-only).",
    )

    @pydantic.model_validator(mode="after")
    def _exactly_one_source(self) -> AvatarVolume:
        if (self.persistent_volume_claim is None) == (self.config_map is None):
            raise ValueError(
                "@persistentVolumeClaim: set exactly one of persistentVolumeClaim or configMap"
            )
        return self


class AvatarSpec(_SpecModel):
    """Which renderer draws the avatar, and its assets."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "self.renderer != 'model' || has(self.modelPath)",
                    "message": "modelPath is required when renderer is model",
                }
            ]
        }
    )

    renderer: Renderer = Field(
        Renderer.PORTRAIT,
        description="portrait: a photo animated by the audio; waveform: a cheap visualizer; "
        "model: a user's lip-sync network loaded from modelPath.",
    )
    image: str | None = Field(
        None,
        max_length=512,
        pattern=ASSET_PATH_PATTERN,
        description="Absolute path of the reference portrait in the worker (usually under the "
        "mounted volume). Empty: the built-in portrait.",
    )
    model_path: str | None = Field(
        None,
        max_length=512,
        pattern=ASSET_PATH_PATTERN,
        description="Absolute path of the model (TorchScript, or a module with safetensors) "
        "for the model renderer.",
    )
    volume: AvatarVolume | None = Field(
        None, description="A volume with the avatar's assets, mounted read-only."
    )

    @pydantic.model_validator(mode="after")
    def _model_needs_path(self) -> AvatarSpec:
        if self.renderer is Renderer.MODEL and not self.model_path:
            raise ValueError("@modelPath: is required when renderer is model")
        return self


class VideoSpec(_SpecModel):
    """The video track the avatar publishes."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": f"self.width * self.height <= {MAX_PIXELS}",
                    "message": f"width × height must be at most {MAX_PIXELS} pixels (1920×1080)",
                }
            ]
        }
    )

    width: int = Field(
        DEFAULT_WIDTH, ge=64, le=1920, multiple_of=2, description="Frame width in pixels (even)."
    )
    height: int = Field(
        DEFAULT_HEIGHT, ge=64, le=1920, multiple_of=2, description="Frame height in pixels (even)."
    )
    fps: int = Field(DEFAULT_FPS, ge=1, le=60, description="Frames per second.")

    @pydantic.model_validator(mode="after")
    def _pixel_budget(self) -> VideoSpec:
        if self.width * self.height > MAX_PIXELS:
            raise ValueError(
                f"@height: width × height must be at most {MAX_PIXELS} pixels (1920×1080), "
                f"got {self.width}×{self.height}"
            )
        return self


class AudioSpec(_SpecModel):
    """The agent's TTS audio as it arrives on the data channel."""

    sample_rate: Literal[16_000, 22_050, 24_000, 44_100, 48_000] = Field(
        DEFAULT_SAMPLE_RATE, description="Sample rate of the agent's PCM in Hz."
    )
    channels: int = Field(1, ge=1, le=2, description="1 (mono) or 2 (stereo).")


class ResourcesSpec(_SpecModel):
    """What the worker needs: VRAM on one GPU, and CPU for video encoding."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "self.gpu != 'none' || !has(self.vramMiB)",
                    "message": "vramMiB must be empty when gpu is none",
                }
            ]
        }
    )

    vram_mib: int | None = Field(
        None,
        ge=512,
        le=262_144,
        alias="vramMiB",
        description="VRAM to reserve on one GPU in MiB, the worker's CUDA context included. "
        f"Empty: {DEFAULT_VRAM_MIB}.",
    )
    gpu: GpuMode = Field(
        GpuMode.SHARED,
        description="shared: bin-packed by VRAM; exclusive: a whole GPU; none: CPU only.",
    )
    cpu: str | None = Field(
        None,
        max_length=32,
        pattern=QUANTITY_PATTERN,
        description="CPU request (video encoding runs on the CPU). Empty: the chart's default.",
    )
    memory: str | None = Field(
        None,
        max_length=32,
        pattern=QUANTITY_PATTERN,
        description="Memory request. Empty: the chart's default.",
    )

    @pydantic.model_validator(mode="after")
    def _none_takes_no_vram(self) -> ResourcesSpec:
        if self.gpu is GpuMode.NONE and self.vram_mib is not None:
            raise ValueError("@vramMiB: must be empty when gpu is none")
        return self

    @property
    def effective_vram_mib(self) -> int:
        """The VRAM placement reserves: 0 without a GPU, the default when unset."""
        if self.gpu is GpuMode.NONE:
            return 0
        return self.vram_mib if self.vram_mib is not None else DEFAULT_VRAM_MIB


class SecretRef(_SpecModel):
    """A Secret holding a VideoSDK API key and secret."""

    name: str = Field(
        ..., min_length=1, max_length=253, pattern=DNS_SUBDOMAIN_PATTERN, description="Secret name."
    )
    api_key_key: str = Field(
        "apiKey",
        max_length=253,
        pattern=SECRET_KEY_PATTERN,
        description="Key of the VideoSDK API key in the Secret.",
    )
    secret_key: str = Field(
        "secret",
        max_length=253,
        pattern=SECRET_KEY_PATTERN,
        description="Key of the VideoSDK secret in the Secret.",
    )


class TokenSecretRef(_SpecModel):
    """A Secret holding a ready-made join token, signed by whoever created the session."""

    name: str = Field(
        ..., min_length=1, max_length=253, pattern=DNS_SUBDOMAIN_PATTERN, description="Secret name."
    )
    key: str = Field(
        "token", max_length=253, pattern=SECRET_KEY_PATTERN, description="Key of the token."
    )


class TokenSource(enum.StrEnum):
    """Who signed the worker's join token."""

    OPERATOR = "Operator"  # minted from the VideoSDK key in credentials.secretRef
    CALLER = "Caller"  # handed over in credentials.tokenSecretRef (the dispatcher's sessions)


class CredentialsSpec(_SpecModel):
    """Where the operator finds the VideoSDK key it signs the worker's token with."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "!has(self.secretRef) || !has(self.tokenSecretRef)",
                    "message": "set secretRef or tokenSecretRef, not both",
                }
            ]
        }
    )

    secret_ref: SecretRef | None = Field(
        None,
        description="A Secret in the session's namespace. Empty: the chart's default Secret in "
        "the operator's namespace. The worker never sees it: it gets only a room-scoped token.",
    )
    token_ttl_seconds: int = Field(
        3600,
        ge=60,
        le=86_400,
        description="Lifetime of the worker's room-scoped join token in seconds.",
    )
    token_secret_ref: TokenSecretRef | None = Field(
        None,
        description="A Secret in the session's namespace holding a join token the caller "
        "signed itself (the dispatcher's sessions): the operator mints none and needs no "
        "VideoSDK key; the token's own expiry applies instead of tokenTtlSeconds.",
    )

    @pydantic.model_validator(mode="after")
    def _one_token_source(self) -> CredentialsSpec:
        if self.secret_ref is not None and self.token_secret_ref is not None:
            raise ValueError("@tokenSecretRef: set secretRef or tokenSecretRef, not both")
        return self

    @property
    def token_source(self) -> TokenSource:
        return TokenSource.CALLER if self.token_secret_ref is not None else TokenSource.OPERATOR


class LifetimeSpec(_SpecModel):
    """Timeouts that end a session, and how long a finished session is kept."""

    join_timeout_seconds: int = Field(
        60, ge=5, le=3600, description="End the session if the worker has not joined by then."
    )
    max_duration_seconds: int = Field(
        4 * 3600, ge=60, le=7 * 86_400, description="End the session this long after it joined."
    )
    idle_timeout_seconds: int = Field(
        600,
        ge=0,
        le=86_400,
        description="End the session after this long with no audio from the agent; 0 disables.",
    )
    ttl_seconds_after_finished: int = Field(
        300,
        ge=0,
        le=7 * 86_400,
        description="Delete the session this long after it ended or failed.",
    )


class Toleration(_SpecModel):
    """A toleration of a node taint, as in a Pod spec."""

    key: str | None = Field(
        None,
        max_length=317,
        pattern=LABEL_KEY_PATTERN,
        description="The taint key; empty with operator Exists tolerates every taint.",
    )
    operator: Literal["Exists", "Equal"] = Field("Equal", description="Exists or Equal.")
    value: str | None = Field(None, max_length=63, description="The taint value for Equal.")
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = Field(
        None, description="The taint effect to tolerate; empty tolerates all effects."
    )
    toleration_seconds: int | None = Field(
        None, ge=0, description="How long a NoExecute taint is tolerated."
    )

    def tolerates(self, taint: dict[str, Any]) -> bool:
        """Kubernetes' own matching rule (an empty key with Exists tolerates everything)."""
        if self.effect is not None and self.effect != taint.get("effect"):
            return False
        if self.key is None:
            return self.operator == "Exists"
        if self.key != taint.get("key"):
            return False
        if self.operator == "Exists":
            return True
        return (self.value or "") == (taint.get("value") or "")


class PoolRef(_SpecModel):
    """An AvatarPool in the session's namespace whose warm workers the session may take."""

    name: str = Field(
        ...,
        min_length=1,
        max_length=63,
        pattern=DNS_LABEL_PATTERN,
        description="Name of the AvatarPool (same namespace as the session).",
    )


# label key → value, as a Pod's nodeSelector (each bounded as the API server bounds labels)
NodeSelector = dict[
    Annotated[str, Field(max_length=317, pattern=LABEL_KEY_PATTERN)],
    Annotated[str, Field(max_length=63)],
]


class AvatarSessionSpec(_SpecModel):
    """What the agent asks for."""

    room_id: str = Field(
        ...,
        min_length=1,
        max_length=128,
        pattern=ROOM_ID_PATTERN,
        description="The VideoSDK room (meeting) id the avatar joins.",
    )
    participant_id: str | None = Field(
        None,
        max_length=128,
        pattern=PARTICIPANT_ID_PATTERN,
        description="The avatar's participant id in the room. Empty: generated by the operator.",
    )
    agent_participant_id: str | None = Field(
        None,
        max_length=128,
        pattern=PARTICIPANT_ID_PATTERN,
        description="The only participant whose audio and control messages the worker accepts. "
        "Empty: the first participant that sends audio.",
    )
    signaling_base_url: str | None = Field(
        None,
        max_length=253,
        pattern=HOSTNAME_PATTERN,
        description="The VideoSDK signaling host the worker joins through (a host name such "
        "as api.videosdk.live, no scheme). Empty: the VideoSDK SDK's default.",
    )
    avatar: AvatarSpec = Field(default_factory=AvatarSpec)
    video: VideoSpec = Field(default_factory=VideoSpec)
    audio: AudioSpec = Field(default_factory=AudioSpec)
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec)
    credentials: CredentialsSpec = Field(default_factory=CredentialsSpec)
    lifetime: LifetimeSpec = Field(default_factory=LifetimeSpec)
    node_selector: NodeSelector = Field(
        default_factory=dict,
        max_length=64,  # bounds the CEL rule's cost below kube-apiserver's budget
        description="Only nodes with all these labels host the worker.",
    )
    tolerations: list[Toleration] = Field(
        default_factory=list, max_length=32, description="Taints the worker tolerates."
    )
    pool_ref: PoolRef | None = Field(
        None,
        description="Take a warm worker of this AvatarPool (same namespace): the pool's "
        "template gives avatar, video, audio, resources, nodeSelector, tolerations and "
        "signalingBaseUrl wherever the session leaves them at their defaults; one the session "
        "sets otherwise must equal the pool's, or the session starts cold with its own "
        "settings. No ready worker: the pool's whenEmpty (start cold, or wait).",
    )

    @pydantic.model_validator(mode="after")
    def _agent_is_not_the_avatar(self) -> AvatarSessionSpec:
        if self.participant_id and self.participant_id == self.agent_participant_id:
            raise ValueError("@agentParticipantId: must differ from participantId")
        return self


# ---------------------------------------------------------------------------------------------
# status


ConditionTypeT = TypeVar("ConditionTypeT", bound=enum.Enum)


class ConditionOf(_StatusModel, Generic[ConditionTypeT]):
    """A condition, Kubernetes style, of a kind of object whose aspects are `ConditionTypeT`
    (a session's, a pool's)."""

    type: ConditionTypeT = Field(..., description="Which aspect this condition is about.")
    status: ConditionStatus = Field(..., description="True, False or Unknown.")
    reason: str = Field(
        ...,
        min_length=1,
        max_length=1024,
        pattern=CONDITION_REASON_PATTERN,
        description="Why, in one CamelCase word.",
    )
    message: str = Field("", max_length=32_768, description="Why, for a human.")
    last_transition_time: datetime = Field(..., description="When status last changed.")
    observed_generation: int | None = Field(
        None, ge=0, description="The spec generation this condition was set for."
    )


class Condition(ConditionOf[ConditionType]):
    """The detailed truth about one aspect of the session, Kubernetes style."""


class Placement(_StatusModel):
    """Where the session runs: the node, the GPU index on it, the VRAM reserved."""

    node: str = Field(..., description="Node name.")
    gpu: int | None = Field(None, ge=0, description="GPU index on the node; empty without a GPU.")
    vram_mib: int = Field(0, ge=0, alias="vramMiB", description="VRAM reserved in MiB.")
    exclusive: bool = Field(False, description="The session holds the whole GPU.")
    product: str | None = Field(None, description="GPU product name from the node's labels.")


class Playback(_StatusModel):
    """What the avatar is doing, as the worker reports it."""

    state: PlaybackState = Field(PlaybackState.IDLE, description="Idle or Speaking.")
    segments: int = Field(0, ge=0, description="TTS segments played (ended or interrupted).")
    interrupts: int = Field(0, ge=0, description="Segments cut short by an interrupt.")
    position: float = Field(
        0.0, ge=0, description="Seconds of the current segment that have left the audio track."
    )
    last_activity_at: datetime | None = Field(None, description="Last audio from the agent.")


class AvatarSessionStatus(_StatusModel):
    """What is true now."""

    phase: Phase | None = None
    observed_generation: int | None = Field(
        None, ge=0, description="The spec generation the operator last acted on."
    )
    conditions: list[Condition] = Field(
        default_factory=list, description="The detailed truth, one condition per aspect."
    )
    message: str | None = Field(None, description="A human-readable summary of the phase.")
    placement: Placement | None = None
    pod_name: str | None = Field(None, description="The worker Pod.")
    secret_name: str | None = Field(None, description="The Secret holding the join token.")
    token_source: TokenSource | None = Field(
        None,
        description="Who signed the worker's join token: Operator (minted from the VideoSDK "
        "key) or Caller (handed over by whoever created the session, e.g. the dispatcher).",
    )
    participant_id: str | None = Field(None, description="The avatar's participant id.")
    scheduled_at: datetime | None = Field(None, description="When a GPU was reserved.")
    joined_at: datetime | None = Field(
        None, description="When the worker joined the room and started publishing."
    )
    ended_at: datetime | None = Field(None, description="When the session ended or failed.")
    end_reason: EndReason | None = Field(None, description="Why the session ended.")
    playback: Playback | None = None
    vram_used_mib: int | None = Field(
        None, ge=0, alias="vramUsedMiB", description="VRAM the worker measured in use."
    )
    fps: float | None = Field(None, ge=0, description="Video frames per second the worker sent.")
    sync_error_ms: float | None = Field(
        None, description="Measured audio/video offset in ms (positive: video late)."
    )

    def condition(self, type_: ConditionType) -> Condition | None:
        return next((c for c in self.conditions if c.type is type_), None)


class AvatarSession(_Model):
    """An avatar for one voice agent in one VideoSDK room."""

    model_config = ConfigDict(extra="ignore")

    api_version: Literal["avatar-operator.dev/v1alpha1"] = API_VERSION
    kind: Literal["AvatarSession"] = KIND
    metadata: dict[str, Any] = Field(default_factory=dict)
    spec: AvatarSessionSpec
    status: AvatarSessionStatus = Field(default_factory=AvatarSessionStatus)

    @property
    def name(self) -> str:
        return str(self.metadata.get("name", ""))

    @property
    def namespace(self) -> str:
        return str(self.metadata.get("namespace", ""))


# ---------------------------------------------------------------------------------------------
# helpers shared by the operator, the worker and the client


class SpecError(ValueError):
    """A spec the models refuse; `fields` names each offending field path."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        self.problems = problems
        super().__init__("; ".join(f"{path}: {msg}" for path, msg in problems))

    @property
    def fields(self) -> list[str]:
        return [path for path, _ in self.problems]


def _error_path(prefix: str, loc: tuple[int | str, ...]) -> str:
    path = prefix
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif part.startswith("function-") or part in ("literal", "enum"):
            continue  # pydantic's internal validator names are not fields
        else:
            path += f".{part}" if path else str(part)
    return path


# What each pattern means, for messages a user can act on.
_PATTERN_HINTS = {
    ROOM_ID_PATTERN: "use letters, digits, '-' and '_', starting with a letter or digit",
    PARTICIPANT_ID_PATTERN: (
        "use letters, digits, '-', '_' and '.', starting with a letter or digit"
    ),
    DNS_SUBDOMAIN_PATTERN: "use a Kubernetes name: lowercase letters, digits, '-' and '.'",
    DNS_LABEL_PATTERN: (
        "use a Kubernetes name of at most 63 characters: lowercase letters, digits and '-'"
    ),
    SECRET_KEY_PATTERN: "use letters, digits, '-', '_' and '.'",
    HOSTNAME_PATTERN: "use a host name such as api.videosdk.live (no scheme or path)",
    QUANTITY_PATTERN: "use a Kubernetes quantity such as 500m, 2 or 4Gi",
    ASSET_PATH_PATTERN: "use an absolute path without '..' segments",
    LABEL_KEY_PATTERN: "use a Kubernetes label key such as example.com/gpu-pool",
    CONDITION_REASON_PATTERN: "use a CamelCase word",
}


_NAMED_FIELD = re.compile(r"^@(\w+): (.*)$", re.DOTALL)


def describe_validation_error(exc: pydantic.ValidationError, prefix: str = "spec") -> SpecError:
    """Turn pydantic's errors into `spec.video.fps: …` lines a user can act on."""
    problems: list[tuple[str, str]] = []
    for err in exc.errors(include_url=False):
        message = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            message = "unknown field"
        elif err["type"] == "string_pattern_mismatch":
            pattern = (err.get("ctx") or {}).get("pattern", "")
            hint = _PATTERN_HINTS.get(pattern, "has characters that are not allowed")
            message = f"{hint} (got {err['input']!r})"
        elif (
            "input" in err
            and err["type"] not in ("missing",)
            and not isinstance(err["input"], dict | list)
        ):
            message += f" (got {err['input']!r})"
        path = _error_path(prefix, tuple(err["loc"]))
        named = _NAMED_FIELD.match(message)
        if named:  # a cross-field rule names the field it blames
            path, message = f"{path}.{named.group(1)}", named.group(2)
        problems.append((path, message))
    return SpecError(problems)


def parse_spec(spec: Any) -> AvatarSessionSpec:
    """Validate a spec from the wire; raises SpecError naming every bad field."""
    if not isinstance(spec, dict):
        raise SpecError([("spec", f"must be an object, got {type(spec).__name__}")])
    try:
        return AvatarSessionSpec.model_validate(spec)
    except pydantic.ValidationError as exc:
        raise describe_validation_error(exc, "spec") from exc


def parse_status(status: Any) -> AvatarSessionStatus:
    """Read a status from the wire; what cannot be read is dropped, never fatal."""
    return parse_lenient(AvatarSessionStatus, status)


StatusT = TypeVar("StatusT", bound=BaseModel)


def parse_lenient(model: type[StatusT], status: Any) -> StatusT:
    """`model` (a status) from the wire, keeping every top-level field that can be read on
    its own and dropping the rest: a status someone wrote badly is never fatal."""
    if not isinstance(status, dict):
        return model()
    try:
        return model.model_validate(status)
    except pydantic.ValidationError:
        fields = {}
        for key, value in status.items():
            try:
                model.model_validate({key: value})
            except pydantic.ValidationError:
                continue
            fields[key] = value
        return model.model_validate(fields)


def now() -> datetime:
    """Timestamps as Kubernetes writes them: UTC, whole seconds (`timestamps.now`)."""
    return timestamps.now()


AnyCondition = TypeVar("AnyCondition", bound=ConditionOf[Any])


def set_condition(
    conditions: list[Condition],
    type_: ConditionType,
    status: ConditionStatus | bool,
    reason: str,
    message: str = "",
    *,
    generation: int | None = None,
    at: datetime | None = None,
) -> list[Condition]:
    """A new list with `type_` set; lastTransitionTime moves only when the status changes."""
    return set_condition_of(
        Condition, conditions, type_, status, reason, message, generation=generation, at=at
    )


def set_condition_of(
    model: type[AnyCondition],
    conditions: list[AnyCondition],
    type_: enum.Enum,
    status: ConditionStatus | bool,
    reason: str,
    message: str = "",
    *,
    generation: int | None = None,
    at: datetime | None = None,
) -> list[AnyCondition]:
    """`set_condition` for conditions of any `model` (a ConditionOf: a pool's, say)."""
    if isinstance(status, bool):
        status = ConditionStatus.TRUE if status else ConditionStatus.FALSE
    previous = next((c for c in conditions if c.type is type_), None)
    if previous is not None and previous.status is status:
        transition = previous.last_transition_time
    else:
        transition = at or now()
    updated = model(
        type=type_,
        status=status,
        reason=reason,
        message=message,
        last_transition_time=transition,
        observed_generation=generation,
    )
    if previous is None:
        return [*conditions, updated]
    return [updated if c.type is type_ else c for c in conditions]


_NAME_UNSAFE = re.compile(r"[^a-z0-9-]+")


def session_name_for_room(room_id: str, participant_id: str | None = None) -> str:
    """A deterministic, DNS-safe AvatarSession name for a room (and avatar participant).

    The same room always gives the same name, so a retried or duplicated create from the agent
    side hits AlreadyExists instead of starting a second avatar. A hash keeps names from rooms
    that differ only in case or punctuation apart.
    """
    key = room_id if participant_id is None else f"{room_id}/{participant_id}"
    digest = hashlib.sha256(key.encode()).hexdigest()[:8]
    readable = _NAME_UNSAFE.sub("-", room_id.lower()).strip("-")[:40].strip("-")
    return f"avatar-{readable}-{digest}" if readable else f"avatar-{digest}"
