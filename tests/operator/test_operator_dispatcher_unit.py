"""The dispatcher's pure parts: request checks, caller tokens, auth, rate limits, settings."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import jwt
import pydantic
import pytest

from avatar_operator import launch
from avatar_operator.settings import OperatorSettings
from avatar_sdk import credentials

NOW = 1_800_000_000.0
PID = "avatar_1a2b3c4d"


def agent_token(**claims: Any) -> str:
    """What videosdk-agents' generate_avatar_credentials signs (no roomId), plus overrides."""
    payload: dict[str, Any] = {
        "apikey": "agent-key",
        "permissions": ["allow_join"],
        "version": 2,
        "iat": int(NOW),
        "exp": int(NOW) + 3600,
        "participantId": PID,
    }
    payload.update(claims)
    payload = {k: v for k, v in payload.items() if v is not None}
    return jwt.encode(payload, "agent-secret-" + "x" * 32, algorithm="HS256")


def body(**fields: Any) -> bytes:
    values: dict[str, Any] = {"room_name": "abcd-efgh-ijkl", "token": agent_token()}
    values.update(fields)
    return json.dumps({k: v for k, v in values.items() if v is not ...}).encode()


def test_the_stock_request_parses() -> None:
    request = launch.parse_launch(body(participant_id=PID), now=NOW)
    assert (request.room_id, request.participant_id) == ("abcd-efgh-ijkl", PID)
    assert request.signaling_base_url is None and request.expires_at == int(NOW) + 3600
    assert request.token not in repr(request)


def test_the_participant_comes_from_the_token_when_the_request_has_none() -> None:
    assert launch.parse_launch(body(), now=NOW).participant_id == PID


@pytest.mark.parametrize(
    "url", ["api.videosdk.live", "https://api.videosdk.live", "wss://api.videosdk.live/"]
)
def test_the_signaling_url_becomes_a_host(url: str) -> None:
    request = launch.parse_launch(body(signaling_base_url=url), now=NOW)
    assert request.signaling_base_url == "api.videosdk.live"


# (case, body, status, error code, text the message must contain)
BAD: list[tuple[str, bytes, int, str, str]] = [
    ("not JSON", b"{room_name: x", 400, "invalid_json", "not JSON"),
    ("not UTF-8", b"\xff\xfe", 400, "invalid_json", "not JSON"),
    ("a list", b"[]", 400, "invalid_request", "JSON object"),
    ("no room", body(room_name=...), 400, "invalid_request", "room_name: required"),
    ("empty room", body(room_name=""), 400, "invalid_request", "room_name: required"),
    ("room a number", body(room_name=42), 400, "invalid_request", "room_name: must be a string"),
    ("room too long", body(room_name="a" * 129), 400, "invalid_request", "room_name: at most 128"),
    ("room with a slash", body(room_name="a/b"), 400, "invalid_request", "room_name: use letters"),
    ("no token", body(token=...), 400, "invalid_request", "token: required"),
    ("token too long", body(token="a" * 9000), 400, "invalid_request", "token: at most 8192"),
    ("token not a JWT", body(token="hello"), 400, "invalid_request", "token: not a JWT"),
    ("token garbage JWT", body(token="a.b.c"), 422, "token_refused", "not a JWT"),
    (
        "bad participant",
        body(participant_id="ava tar"),
        400,
        "invalid_request",
        "participant_id: use letters",
    ),
    (
        "signaling URL with a path",
        body(signaling_base_url="https://x.example.com/v1"),
        400,
        "invalid_request",
        "signaling_base_url",
    ),
    ("expired", body(token=agent_token(exp=int(NOW) - 5)), 422, "token_refused", "expired"),
    (
        "expiring now",
        body(token=agent_token(exp=int(NOW) + 5)),
        422,
        "token_refused",
        "too soon for a worker to join",
    ),
    ("no exp", body(token=agent_token(exp=None)), 422, "token_refused", "no exp claim"),
    (
        "not yet valid",
        body(token=agent_token(nbf=int(NOW) + 600)),
        422,
        "token_refused",
        "not valid for another",
    ),
    (
        "no participant claim",
        body(token=agent_token(participantId=None)),
        422,
        "token_refused",
        "no participantId claim",
    ),
    (
        "someone else's token",
        body(participant_id="avatar_other"),
        422,
        "token_refused",
        "is for participant 'avatar_1a2b3c4d', not 'avatar_other'",
    ),
    (
        "another room's token",
        body(token=agent_token(roomId="zzzz-zzzz-zzzz")),
        422,
        "token_refused",
        "is for room 'zzzz-zzzz-zzzz'",
    ),
    (
        "no join permission",
        body(token=agent_token(permissions=["allow_mod"])),
        422,
        "token_refused",
        "allow_join",
    ),
]


@pytest.mark.parametrize(
    ("raw", "status", "code", "text"), [pytest.param(*case[1:], id=case[0]) for case in BAD]
)
def test_bad_requests_are_refused_saying_why(raw: bytes, status: int, code: str, text: str) -> None:
    with pytest.raises(launch.LaunchError) as info:
        launch.parse_launch(raw, now=NOW)
    assert (info.value.status, info.value.code) == (status, code)
    assert text in info.value.message
    assert agent_token() not in info.value.message


def test_unknown_fields_are_ignored_for_newer_agents() -> None:
    raw = json.dumps({"room_name": "r1", "token": agent_token(), "attributes": {"x": "y"}})
    assert launch.parse_launch(raw.encode(), now=NOW).room_id == "r1"


def test_a_token_of_ours_passes_the_caller_checks() -> None:
    creds = credentials.VideoSDKCredentials("key", "s" * 40)
    minted = credentials.mint_join_token(creds, room_id="r1", participant_id="p1", now=NOW)
    claims = credentials.check_caller_token(
        minted.token, room_id="r1", participant_id="p1", now=NOW
    )
    assert claims.expires_at == minted.expires_at


# --- auth and limits -------------------------------------------------------------------------


@pytest.fixture
def token_file(tmp_path: Path) -> Path:
    path = tmp_path / "token"
    path.write_text("t" * 32 + "\n")
    return path


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


@pytest.mark.parametrize(
    ("header", "ok"),
    [
        ("Bearer " + "t" * 32, True),
        ("bearer  " + "t" * 32, True),
        (basic("avatar", "t" * 32), True),  # what a URL with user info turns into
        (basic("", "t" * 32), True),
        (None, False),
        ("", False),
        ("Bearer " + "t" * 31, False),
        ("Bearer " + "t" * 33, False),
        (basic("t" * 32, ""), False),  # the token as the user name is not the password
        ("Basic !!!notbase64", False),
        ("Token " + "t" * 32, False),
    ],
)
def test_the_bearer_token(token_file: Path, header: str | None, ok: bool) -> None:
    assert launch.BearerToken(str(token_file)).matches(header) is ok


def test_the_token_file_is_reread_when_rotated(token_file: Path) -> None:
    bearer = launch.BearerToken(str(token_file))
    token_file.write_text("n" * 40)
    assert bearer.matches("Bearer " + "n" * 40)
    assert not bearer.matches("Bearer " + "t" * 32)


def test_a_missing_or_short_token_file_stops_the_dispatcher(tmp_path: Path) -> None:
    with pytest.raises(launch.ConfigError, match="cannot be read"):
        launch.BearerToken(str(tmp_path / "absent"))
    (tmp_path / "short").write_text("abc")
    with pytest.raises(launch.ConfigError, match="shorter than 16 bytes"):
        launch.BearerToken(str(tmp_path / "short"))


def test_the_rate_limiter_allows_a_burst_then_the_rate() -> None:
    now = [0.0]
    limiter = launch.RateLimiter(60, clock=lambda: now[0])
    assert all(limiter.take("a") == 0 for _ in range(60))
    wait = limiter.take("a")
    assert 0.9 <= wait <= 1.0
    assert limiter.take("b") == 0  # per caller
    now[0] += 1.0
    assert limiter.take("a") == 0
    assert limiter.take("a") > 0


# --- settings ----------------------------------------------------------------------------------


def settings(**values: Any) -> OperatorSettings:
    return OperatorSettings(**values)


def test_the_dispatcher_is_off_by_default() -> None:
    assert settings().dispatcher_port == 0


def test_the_dispatcher_needs_a_way_to_authenticate() -> None:
    with pytest.raises(pydantic.ValidationError, match="DISPATCHER_TOKEN_FILE is required"):
        settings(dispatcher_port=8090)
    # tokens signed with the operator's own VideoSDK key are a way too
    assert settings(dispatcher_port=8090, dispatcher_accept_signed_tokens=True).dispatcher_port


def test_the_dispatcher_namespace_must_be_watched(token_file: Path) -> None:
    common = {"dispatcher_port": 8090, "dispatcher_token_file": str(token_file)}
    assert settings(**common).launch_namespace == "avatar-system"
    assert settings(**common, namespaces=["agents", "b"]).launch_namespace == "agents"
    with pytest.raises(pydantic.ValidationError, match="not among the watched namespaces"):
        settings(**common, namespaces=["agents"], dispatcher_namespace="other")


@pytest.mark.parametrize(
    ("template", "text"),
    [
        ({"roomId": "x"}, "roomId: set by each launch request"),
        ({"credentials": {}}, "credentials: set by each launch request"),
        ({"video": {"fps": 1000}}, "spec.video.fps"),
        ({"avatr": {}}, "spec.avatr: unknown field"),
    ],
)
def test_a_bad_session_template_is_refused_at_start(template: dict[str, Any], text: str) -> None:
    with pytest.raises(pydantic.ValidationError, match=text.replace(".", r"\.")):
        settings(dispatcher_session_template=template)


def test_the_template_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    template = {"avatar": {"renderer": "waveform"}, "resources": {"vramMiB": 1024}}
    monkeypatch.setenv("AVATAR_OPERATOR_DISPATCHER_SESSION_TEMPLATE", json.dumps(template))
    assert OperatorSettings().dispatcher_session_template == template
