"""Operator configuration: environment variables (`AVATAR_OPERATOR_*`) or flags, validated.

The chart sets these as env vars on the operator Deployment; `python -m avatar_operator --help`
lists the same as flags. A bad value stops the operator at start-up with the variable named,
instead of failing later on the first session.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

import pydantic
from pydantic import Field
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from avatar_sdk import api
from avatar_sdk.placement import engine

ENV_PREFIX = "AVATAR_OPERATOR_"
# Spec fields each dispatcher launch sets itself (a template may not).
DISPATCHER_OWNED_FIELDS = (
    "roomId",
    "room_id",
    "participantId",
    "participant_id",
    "credentials",
    "signalingBaseUrl",
    "signaling_base_url",
)


class OperatorSettings(BaseSettings):
    """Everything the operator can be told."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", frozen=True)

    # --- what it watches -----------------------------------------------------------------
    namespaces: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Namespaces to watch; empty watches the whole cluster.",
    )
    operator_namespace: str = Field(
        "avatar-system", description="Where the operator runs and its default Secret lives."
    )
    # --- the worker ------------------------------------------------------------------------
    worker_image: str = Field("ghcr.io/avatar-operator/worker:0.1.0", min_length=1)
    worker_image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = "IfNotPresent"
    worker_command: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["avatar-worker", "run"],
        description="The worker container's command.",
    )
    worker_cpu: str = Field("1", pattern=api.QUANTITY_PATTERN)
    worker_memory: str = Field("2Gi", pattern=api.QUANTITY_PATTERN)
    worker_cpu_limit: str | None = Field(None, pattern=api.QUANTITY_PATTERN)
    worker_memory_limit: str | None = Field("4Gi", pattern=api.QUANTITY_PATTERN)
    worker_transport: Literal["videosdk", "local"] = "videosdk"
    worker_local_room_url: str | None = None
    worker_status_api: str | None = Field(
        None,
        description="Kubernetes API URL workers report to; empty: in-cluster service discovery.",
    )
    worker_priority_class: str | None = None
    max_pod_restarts: int = Field(2, ge=0, le=10, description="Worker Pods recreated per session.")
    # --- credentials -------------------------------------------------------------------------
    default_credentials_secret: str = Field(
        "videosdk-credentials",
        pattern=api.DNS_SUBDOMAIN_PATTERN,
        description="Secret in the operator's namespace used when a session names none.",
    )
    default_api_key_key: str = "apiKey"
    default_secret_key: str = "secret"
    # --- placement ---------------------------------------------------------------------------
    gpu_pinning: Literal["visible-devices", "resource"] = Field(
        "visible-devices",
        description="visible-devices: pin by NVIDIA_VISIBLE_DEVICES (the operator bin-packs); "
        "resource: request nvidia.com/gpu (time-slicing/MPS clusters).",
    )
    worker_runtime_class: str | None = Field(
        None, description="runtimeClassName for workers (e.g. nvidia) when not the default."
    )
    placement: engine.Settings = Field(
        default_factory=engine.Settings,
        description="GPU inventory overrides (pools, headroom, overhead, sessions per GPU), "
        "policy and queue rules, as JSON in AVATAR_OPERATOR_PLACEMENT.",
    )
    # --- lifecycle ---------------------------------------------------------------------------
    sweep_interval_seconds: float = Field(1.0, gt=0, le=60)
    node_lost_grace_seconds: float = Field(
        20.0,
        gt=0,
        le=3600,
        description="A Node NotReady this long ends its sessions with NodeLost (on top of the "
        "controller-manager's node-monitor-grace-period that makes it NotReady).",
    )
    # --- API access and HA -------------------------------------------------------------------
    watch_server_timeout_seconds: int = Field(
        300, ge=10, description="Asked of the API server per watch."
    )
    watch_client_timeout_seconds: int = Field(
        330, ge=10, description="Client-side cap on a watch (a silent stall ends here)."
    )
    connect_timeout_seconds: float = Field(10.0, gt=0)
    request_timeout_seconds: float = Field(30.0, gt=0)
    leader_election: bool = True
    lease_name: str = Field("avatar-operator", pattern=api.DNS_SUBDOMAIN_PATTERN)
    lease_duration_seconds: float = Field(10.0, ge=2, le=60)
    lease_renew_seconds: float = Field(2.0, gt=0, le=30)
    identity: str | None = Field(None, description="This replica's name (default: hostname).")
    # --- HTTP: /healthz, /readyz, /metrics; the workers' status relay (TLS) -------------------
    http_port: int = Field(
        8080,
        ge=0,
        le=65535,
        description="Plain HTTP: /healthz, /readyz, /metrics (and the relay without TLS); 0 "
        "serves nothing.",
    )
    status_url: str | None = Field(
        None,
        description="The URL workers reach this operator's status relay at (the chart's "
        "Service; https:// when the relay serves TLS); empty: workers do not report.",
    )
    status_relay_port: int = Field(
        8443, ge=1, le=65535, description="Port of the status relay when it serves TLS."
    )
    status_relay_cert_file: str | None = Field(
        None,
        description="The relay's serving certificate (PEM, chain first); with the key file, "
        "the relay serves TLS on status_relay_port; empty: plain HTTP on http_port.",
    )
    status_relay_key_file: str | None = Field(
        None, description="The private key of status_relay_cert_file (PEM)."
    )
    status_relay_ca_file: str | None = Field(
        None,
        description="The CA that signed the relay's certificate (PEM): given to every worker, "
        "which trusts it alone for the relay; empty: workers use their system trust store.",
    )
    status_relay_key: str | None = Field(
        None,
        min_length=16,
        repr=False,
        description="Key of the workers' status credentials; the same on every replica.",
    )
    log_format: Literal["text", "json"] = "text"
    # --- the dispatcher: videosdk-agents' `POST /launch`, for agents that migrate by URL -------
    dispatcher_port: int = Field(
        0, ge=0, le=65535, description="Port of POST /launch; 0 (the default) serves nothing."
    )
    dispatcher_token_file: str | None = Field(
        None,
        description="File holding the bearer token callers must present (mounted from a "
        "Secret; re-read when it changes). Required when the dispatcher is on.",
    )
    dispatcher_accept_signed_tokens: bool = Field(
        False,
        description="Also let in a launch without the bearer token when its join token is "
        "signed with the operator's own VideoSDK key (the default credentials Secret): agents of "
        "the same VideoSDK account then need only the plain URL, no secret in it.",
    )
    dispatcher_namespace: str | None = Field(
        None,
        pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$",
        description="Where it creates sessions; empty: the first watched namespace, else the "
        "operator's own.",
    )
    dispatcher_max_sessions: int = Field(
        20, ge=1, le=100_000, description="Live sessions it may have created at once (429 above)."
    )
    dispatcher_rate_per_minute: int = Field(
        60, ge=1, le=100_000, description="Requests per minute from one caller address (429 above)."
    )
    dispatcher_max_body_bytes: int = Field(
        16_384, ge=1_024, le=1_048_576, description="Largest request body (413 above)."
    )
    dispatcher_session_template: dict[str, Any] = Field(
        default_factory=dict,
        description="AvatarSession spec fields for the sessions it creates (avatar, video, "
        "resources, lifetime, …), as JSON; roomId, participantId and credentials come from the "
        "request.",
    )
    dispatcher_placement_wait_seconds: float = Field(
        5.0, ge=0, le=60, description="How long a launch waits for the GPU decision (503 if none)."
    )
    dispatcher_join_wait_seconds: float = Field(
        90.0, gt=0, le=600, description="The longest `?wait=joined` may wait."
    )
    dispatcher_answer_budget_seconds: float = Field(
        4.5,
        gt=0,
        le=600,
        description="Every `/launch` answer comes within this (the stock client gives up after "
        "5 s): a session not placed by then is deleted and the caller told 503 with Retry-After.",
    )

    @pydantic.field_validator("namespaces", "worker_command", mode="before")
    @classmethod
    def _split_list(cls, value: Any) -> Any:
        """Env vars hold lists as JSON or as comma-separated words."""
        if isinstance(value, str):
            value = value.strip()
            if value.startswith("["):
                return json.loads(value)
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @pydantic.model_validator(mode="after")
    def _timeouts_make_sense(self) -> OperatorSettings:
        if self.watch_client_timeout_seconds <= self.watch_server_timeout_seconds:
            raise ValueError(
                "watch_client_timeout_seconds must exceed watch_server_timeout_seconds, "
                "or a healthy watch is cut before the server ends it"
            )
        if self.lease_renew_seconds * 2 > self.lease_duration_seconds:
            raise ValueError("lease_renew_seconds must be at most half of lease_duration_seconds")
        if self.dispatcher_port:
            if not self.dispatcher_token_file and not self.dispatcher_accept_signed_tokens:
                raise ValueError(
                    f"{ENV_PREFIX}DISPATCHER_TOKEN_FILE is required when the dispatcher is on "
                    f"(or {ENV_PREFIX}DISPATCHER_ACCEPT_SIGNED_TOKENS): whoever can reach it can "
                    "start GPU pods"
                )
            if self.dispatcher_port == self.http_port:
                raise ValueError("dispatcher_port must differ from http_port")
            if self.namespaces and self.launch_namespace not in self.namespaces:
                raise ValueError(
                    f"dispatcher_namespace {self.launch_namespace!r} is not among the watched "
                    f"namespaces {self.namespaces}: its sessions would never start"
                )
        return self

    @pydantic.model_validator(mode="after")
    def _relay_tls_makes_sense(self) -> OperatorSettings:
        cert, key = self.status_relay_cert_file, self.status_relay_key_file
        if bool(cert) != bool(key):
            raise ValueError(
                f"{ENV_PREFIX}STATUS_RELAY_CERT_FILE and {ENV_PREFIX}STATUS_RELAY_KEY_FILE go "
                "together: set both for TLS, or neither for plain HTTP"
            )
        if not self.relay_tls:
            if self.status_relay_ca_file:
                raise ValueError(
                    f"{ENV_PREFIX}STATUS_RELAY_CA_FILE needs {ENV_PREFIX}STATUS_RELAY_CERT_FILE "
                    "and _KEY_FILE: without them the relay serves plain HTTP"
                )
            return self
        if self.status_relay_port in (self.http_port, self.dispatcher_port):
            raise ValueError(
                "status_relay_port must differ from http_port and dispatcher_port: the relay "
                "serves TLS on a port of its own"
            )
        if self.status_url and not self.status_url.startswith("https://"):
            raise ValueError(
                f"{ENV_PREFIX}STATUS_URL must be https:// when the relay serves TLS "
                f"(got {self.status_url!r})"
            )
        return self

    @property
    def relay_tls(self) -> bool:
        """Whether the status relay serves TLS (on status_relay_port)."""
        return bool(self.status_relay_cert_file)

    @pydantic.field_validator("dispatcher_session_template")
    @classmethod
    def _template_is_a_spec(cls, value: dict[str, Any]) -> dict[str, Any]:
        owned = sorted(set(value) & set(DISPATCHER_OWNED_FIELDS))
        if owned:
            raise ValueError(f"{', '.join(owned)}: set by each launch request, not the template")
        try:
            api.parse_spec({**value, "roomId": "template-check"})
        except api.SpecError as exc:
            raise ValueError(f"not a valid session spec: {exc}") from None
        return value

    @property
    def launch_namespace(self) -> str:
        """Where the dispatcher creates sessions."""
        if self.dispatcher_namespace:
            return self.dispatcher_namespace
        return self.namespaces[0] if self.namespaces else self.operator_namespace

    @property
    def clusterwide(self) -> bool:
        return not self.namespaces

    def to_env(self) -> dict[str, str]:
        """The `AVATAR_OPERATOR_*` variables that give these settings to another process (unset
        optional ones left out): lists and objects as JSON, booleans as true/false."""
        env: dict[str, str] = {}
        for name, value in self.model_dump(mode="json", by_alias=True).items():
            if value is None:
                continue
            if isinstance(value, dict | list):
                text = json.dumps(value)
            elif isinstance(value, bool):
                text = "true" if value else "false"
            else:
                text = str(value)
            env[f"{ENV_PREFIX}{name.upper()}"] = text
        return env


def describe_settings_error(exc: pydantic.ValidationError) -> str:
    """One line per bad setting, named as the env var a user sets."""
    lines = []
    for err in exc.errors(include_url=False):
        field = str(err["loc"][0]) if err["loc"] else "settings"
        lines.append(f"{ENV_PREFIX}{field.upper()}: {err['msg']}")
    return "; ".join(lines)
