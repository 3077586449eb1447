"""A warm pool worker's assignment: the contract between the operator's relay and the worker.

A pool worker (`avatar_sdk.pools`) starts with no session: its Pod is made from the pool's
template, it prepares its renderer and then asks the operator's status relay, over TLS, for its
assignment — a long-poll (`GET ASSIGNMENT_PATH?timeoutSeconds=N`) that answers

* 200 with an `Assignment` once a session has claimed the worker: the room, the participant
  ids, the room-scoped join token and the session's status credential;
* 204 when nothing came within `timeoutSeconds` (ask again);
* 401 for a wrong credential, 410 Gone when the worker is no longer in its pool (deleted,
  or its pool scaled down): the worker exits;
* 503 from a standby operator replica (retry; the leader answers).

The first poll is the worker saying it is ready: the operator then labels its Pod ready, and
only ready workers are claimed. The credential is `HMAC-SHA256(relay key, "pool-worker/" +
namespace/pod)`, from the worker's own Secret: it reads this worker's assignment and nothing
else (it is not a status credential, it cannot write any status). Tokens are `SecretStr`, so
neither a log line nor a repr of an assignment shows them.
"""

from __future__ import annotations

import hashlib
import hmac

from pydantic import BaseModel, ConfigDict, Field, SecretStr
from pydantic.alias_generators import to_camel

from avatar_sdk import api

ASSIGNMENT_PATH = "/assignments/v1/namespaces/{namespace}/workers/{worker}"
POOL_TOKEN_KEY = "pool-token"  # the key of the worker's credential in its pool Secret
MAX_WAIT_SECONDS = 60  # the longest long-poll the relay holds open
DEFAULT_WAIT_SECONDS = 25


def path_for(namespace: str, worker: str) -> str:
    return ASSIGNMENT_PATH.format(namespace=namespace, worker=worker)


def worker_token(key: bytes, namespace: str, worker: str) -> str:
    """The credential a pool worker presents to read its assignment (never a status one)."""
    message = f"pool-worker/{namespace}/{worker}".encode()
    return hmac.new(key, message, hashlib.sha256).hexdigest()


class Assignment(BaseModel):
    """What a claimed pool worker needs to serve its session (camelCase on the wire)."""

    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True
    )

    session_name: str = Field(..., min_length=1, max_length=253)
    session_namespace: str = Field(..., min_length=1, max_length=63)
    room_id: str = Field(..., min_length=1, max_length=128, pattern=api.ROOM_ID_PATTERN)
    participant_id: str = Field(
        ..., min_length=1, max_length=128, pattern=api.PARTICIPANT_ID_PATTERN
    )
    agent_participant_id: str | None = Field(
        None, max_length=128, pattern=api.PARTICIPANT_ID_PATTERN
    )
    signaling_base_url: str | None = Field(None, max_length=253, pattern=api.HOSTNAME_PATTERN)
    local_room_url: str | None = Field(None, max_length=2048)
    idle_timeout_seconds: int = Field(600, ge=0)
    join_token: SecretStr
    status_token: SecretStr

    def to_wire(self) -> dict[str, object]:
        """The JSON the relay answers (the only place the tokens are revealed)."""
        wire = self.model_dump(mode="json", by_alias=True, exclude_none=True)
        wire["joinToken"] = self.join_token.get_secret_value()
        wire["statusToken"] = self.status_token.get_secret_value()
        return wire
