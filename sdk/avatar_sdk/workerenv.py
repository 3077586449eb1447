"""The contract between the operator's Pod manifest and the worker: environment variables.

The operator writes a worker's settings as `AVATAR_*` environment variables (`to_env`) and the
worker reads them back (`from_env`), so the two can never disagree on a name. The join token and
the status-report credential are *not* among them: they are files from the session's Secret
(`token_file`, `status_token_file`), because environment variables leak into `kubectl
describe`, crash dumps and child processes. The same Secret carries the CA certificate of the
operator's status relay (`status_ca_file`, public) when the relay serves TLS: the worker trusts
that CA, and only it, for the relay.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal, Self

import pydantic
from pydantic import BaseModel, ConfigDict, Field

from avatar_sdk import api, assignment, pools

ENV_PREFIX = "AVATAR_"
TOKEN_DIR = "/var/run/secrets/avatar"
TOKEN_KEY = "token"  # the key of the join token in the session's Secret
STATUS_TOKEN_KEY = "status-token"  # the key of the worker's status-report credential
STATUS_CA_KEY = "status-ca.crt"  # the key of the status relay's CA certificate (PEM)


class CommonSettings(BaseModel):
    """What every worker is told, a session's or a warm pool's: how it renders and reports."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    renderer: api.Renderer = api.Renderer.PORTRAIT
    image: str | None = None
    model_path: str | None = None
    video_width: int = Field(api.DEFAULT_WIDTH, ge=64, le=1920)
    video_height: int = Field(api.DEFAULT_HEIGHT, ge=64, le=1920)
    video_fps: int = Field(api.DEFAULT_FPS, ge=1, le=60)
    audio_sample_rate: int = api.DEFAULT_SAMPLE_RATE
    audio_channels: int = Field(1, ge=1, le=2)
    # videosdk: the real room; local: the project's loopback room (tests, demo).
    transport: Literal["videosdk", "local"] = "videosdk"
    local_room_url: str | None = None
    # VideoSDK's signaling host (the dispatcher's signaling_base_url); empty: the SDK's default.
    signaling_base_url: str | None = Field(None, max_length=253, pattern=api.HOSTNAME_PATTERN)
    # api: report into the session's status through the operator's status endpoint, which
    # speaks the Kubernetes status-subresource PATCH; none: do not report.
    status_reporting: Literal["api", "none"] = "api"
    status_url: str | None = None  # base URL of that endpoint (the operator's status relay)
    # The CA the relay's certificate must be signed by (an https status_url); unset: the
    # system's trust store.
    status_ca_file: str | None = None
    # /healthz (alive) and /readyz (joined and publishing) for the Pod's probes; 0 disables.
    health_port: int = Field(8081, ge=0, le=65535)
    idle_timeout_seconds: int = Field(600, ge=0)
    log_level: Literal["debug", "info", "warning", "error"] = "info"

    def to_env(self) -> dict[str, str]:
        """`AVATAR_*` variables; unset optional settings are left out."""
        env: dict[str, str] = {}
        for name, value in self.model_dump(mode="json").items():
            if value is None:
                continue
            env[ENV_PREFIX + name.upper()] = str(value)
        return env

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> Self:
        """Read the settings back; raises ValueError naming the variable that is wrong."""
        values = {
            key[len(ENV_PREFIX) :].lower(): value
            for key, value in environ.items()
            if key.startswith(ENV_PREFIX) and key[len(ENV_PREFIX) :].lower() in cls.model_fields
        }
        try:
            return cls.model_validate(values)
        except pydantic.ValidationError as exc:
            problems = []
            for err in exc.errors(include_url=False):
                field = str(err["loc"][0]) if err["loc"] else "?"
                problems.append(f"{ENV_PREFIX}{field.upper()}: {err['msg']}")
            raise ValueError("; ".join(problems)) from exc


class WorkerSettings(CommonSettings):
    """Everything a worker needs to know about its session."""

    session_name: str = Field(..., min_length=1)
    session_namespace: str = Field("default", min_length=1)
    room_id: str = Field(..., min_length=1, max_length=128, pattern=api.ROOM_ID_PATTERN)
    participant_id: str = Field(
        ..., min_length=1, max_length=128, pattern=api.PARTICIPANT_ID_PATTERN
    )
    agent_participant_id: str | None = None
    # Where the join token is mounted (a file, never an env var).
    token_file: str = f"{TOKEN_DIR}/{TOKEN_KEY}"
    status_token_file: str = f"{TOKEN_DIR}/{STATUS_TOKEN_KEY}"

    @classmethod
    def for_session(
        cls, session: api.AvatarSession, participant_id: str, **overrides: object
    ) -> WorkerSettings:
        """The settings the operator gives the worker of `session`."""
        spec = session.spec
        values: dict[str, object] = {
            "session_name": session.name,
            "session_namespace": session.namespace or "default",
            "room_id": spec.room_id,
            "participant_id": participant_id,
            "agent_participant_id": spec.agent_participant_id,
            "signaling_base_url": spec.signaling_base_url,
            **_render_values(spec.avatar, spec.video, spec.audio),
            "idle_timeout_seconds": spec.lifetime.idle_timeout_seconds,
        }
        values.update(overrides)
        return cls.model_validate(values)


class PoolWorkerSettings(CommonSettings):
    """A warm pool worker: prepared from its pool's template, its session comes later
    (`avatar_sdk.assignment`), over the relay, with the tokens."""

    pool_name: str = Field(..., min_length=1, max_length=63)
    pool_worker: str = Field(..., min_length=1, max_length=253)  # its own Pod's name
    pool_namespace: str = Field("default", min_length=1)
    pool_token_file: str = f"{TOKEN_DIR}/{assignment.POOL_TOKEN_KEY}"

    @classmethod
    def for_pool(
        cls, pool: pools.AvatarPool, worker: str, **overrides: object
    ) -> PoolWorkerSettings:
        """The settings the operator gives a warm worker of `pool`."""
        template = pool.spec.template
        values: dict[str, object] = {
            "pool_name": pool.name,
            "pool_namespace": pool.metadata.get("namespace") or "default",
            "pool_worker": worker,
            "signaling_base_url": template.signaling_base_url,
            **_render_values(template.avatar, template.video, template.audio),
        }
        values.update(overrides)
        return cls.model_validate(values)

    def assigned(self, given: assignment.Assignment) -> WorkerSettings:
        """The session's settings, once claimed: this worker's rendering, the room's ids."""
        values = self.model_dump(include=set(CommonSettings.model_fields))
        values.update(
            session_name=given.session_name,
            session_namespace=given.session_namespace,
            room_id=given.room_id,
            participant_id=given.participant_id,
            agent_participant_id=given.agent_participant_id,
            idle_timeout_seconds=given.idle_timeout_seconds,
        )
        if given.signaling_base_url:
            values["signaling_base_url"] = given.signaling_base_url
        if given.local_room_url:
            values["local_room_url"] = given.local_room_url
        return WorkerSettings.model_validate(values)


def _render_values(
    avatar: api.AvatarSpec, video: api.VideoSpec, audio: api.AudioSpec
) -> dict[str, object]:
    return {
        "renderer": avatar.renderer,
        "image": avatar.image,
        "model_path": avatar.model_path,
        "video_width": video.width,
        "video_height": video.height,
        "video_fps": video.fps,
        "audio_sample_rate": audio.sample_rate,
        "audio_channels": audio.channels,
    }
