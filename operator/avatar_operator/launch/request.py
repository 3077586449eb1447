"""What a `/launch` request is: the AvatarJoinInfo body, checked field by field, and the errors
the endpoint answers with.

`parse_launch` refuses what the CRD would refuse, named as the request's own field
(`room_name`, not `spec.roomId`), and checks the token as a JWT with an expiry that leaves time
to join. Its signature is not checked here: the operator may not hold the agent's key — VideoSDK
checks it when the worker joins (`auth` checks it where the operator's own key signed it).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import NamedTuple

from aiohttp import web

from avatar_sdk import api, credentials, strictjson
from avatar_sdk.objects import Obj

# The request's own fields (videosdk-agents' AvatarJoinInfo) and their longest accepted values.
FIELD_LIMITS = {"room_name": 128, "token": 8_192, "participant_id": 128, "signaling_base_url": 253}
REQUIRED_FIELDS = ("room_name", "token")


class LaunchError(Exception):
    """A refused launch: the HTTP status, a machine-readable code and a human message."""

    def __init__(
        self, status: int, code: str, message: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}

    def response(self) -> web.Response:
        return web.json_response(
            {"error": self.code, "message": self.message}, status=self.status, headers=self.headers
        )


@dataclass(frozen=True)
class LaunchRequest:
    """A checked AvatarJoinInfo. `repr` never shows the token."""

    room_id: str
    participant_id: str
    token: str
    signaling_base_url: str | None
    expires_at: int

    def __repr__(self) -> str:
        return (
            f"LaunchRequest(room_id={self.room_id!r}, participant_id={self.participant_id!r}, "
            f"token='***', signaling_base_url={self.signaling_base_url!r})"
        )


def bad_field(field: str, message: str) -> LaunchError:
    return LaunchError(400, "invalid_request", f"{field}: {message}")


class WaitOptions(NamedTuple):
    """The query of a launch: whether to answer once joined, and for how long to wait."""

    joined: bool
    timeout: float | None  # seconds; None: the configured limit


def parse_query(query: Mapping[str, str]) -> WaitOptions:
    """`?wait=joined&timeout=S`, checked before anything is created."""
    wait = query.get("wait", "")
    if wait not in ("", "created", "joined"):
        raise bad_field("wait", f"use wait=joined or leave it out (got {wait!r})")
    raw = query.get("timeout")
    timeout: float | None = None
    if raw is not None:
        try:
            timeout = float(raw)
        except ValueError:
            raise bad_field("timeout", f"seconds, as a number (got {raw[:40]!r})") from None
        if not math.isfinite(timeout) or timeout <= 0:
            raise bad_field("timeout", f"a positive number of seconds (got {raw[:40]!r})")
    return WaitOptions(joined=wait == "joined", timeout=timeout)


def parse_launch(
    raw: bytes, *, now: float | None = None, min_token_seconds: int = 30
) -> LaunchRequest:
    """Check an AvatarJoinInfo body; raises LaunchError naming the field at fault.

    Unknown fields are ignored, so that a newer agent adding one still launches.
    """
    try:
        body = strictjson.loads(raw)
    except strictjson.JSONRefused as exc:
        raise LaunchError(
            400, "invalid_json", f"the body is not JSON this accepts: {exc}"
        ) from None
    if not isinstance(body, dict):
        raise LaunchError(
            400, "invalid_request", f"the body must be a JSON object, not {type(body).__name__}"
        )
    values: dict[str, str | None] = {}
    for field, limit in FIELD_LIMITS.items():
        value = body.get(field)
        if value is None or value == "":
            if field in REQUIRED_FIELDS:
                raise bad_field(field, "required")
            values[field] = None
            continue
        if not isinstance(value, str):
            raise bad_field(field, f"must be a string, not {type(value).__name__}")
        if len(value) > limit:
            raise bad_field(field, f"at most {limit} characters (got {len(value)})")
        values[field] = value.strip()

    room = values["room_name"] or ""
    participant = values["participant_id"]
    base_url = values["signaling_base_url"]
    if base_url is not None:
        # AvatarJoinInfo may carry a URL; the VideoSDK SDK wants the bare host
        for scheme in ("https://", "wss://"):
            base_url = base_url.removeprefix(scheme)
        base_url = base_url.rstrip("/")
    token = values["token"] or ""
    # What the CRD would refuse is refused here, named as the request's field.
    spec: Obj = {"roomId": room}
    if participant is not None:
        spec["participantId"] = participant
    if base_url is not None:
        spec["signalingBaseUrl"] = base_url
    try:
        api.parse_spec(spec)
    except api.SpecError as exc:
        names = {
            "spec.roomId": "room_name",
            "spec.participantId": "participant_id",
            "spec.signalingBaseUrl": "signaling_base_url",
        }
        path, message = exc.problems[0]
        raise bad_field(names.get(path, path), message) from None
    if token.count(".") != 2:
        raise bad_field("token", "not a JWT (expected three dot-separated parts)")
    try:
        claims = credentials.check_caller_token(
            token,
            room_id=room,
            participant_id=participant,
            now=now,
            min_remaining_seconds=min_token_seconds,
        )
    except credentials.CredentialsError as exc:
        raise LaunchError(422, "token_refused", f"token: {exc}") from None
    assert claims.participant_id is not None and claims.expires_at is not None
    return LaunchRequest(
        room_id=room,
        participant_id=participant or claims.participant_id,
        token=token,
        signaling_base_url=base_url,
        expires_at=claims.expires_at,
    )
