"""POST /launch against the real operator on the emulated cluster: the stock agent's request
starts a session that joins; repeats, bad input, auth, the cap and a full fleet are answered."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import pytest
from lifecycle_support import API_KEY, NS, SECRET, Env, free_port, phase_is

from avatar_operator import launch, manifests, runner
from avatar_sdk import api

BEARER = "b" * 40


@dataclasses.dataclass(frozen=True)
class AvatarJoinInfo:
    """videosdk-agents 1.0.30's `AvatarJoinInfo` (videosdk/agents/avatar/avatar_auth.py), field
    for field: that module needs Python 3.12, so it is not imported here."""

    room_name: str
    token: str
    participant_id: str | None = None
    signaling_base_url: str | None = None


def generate_avatar_credentials(participant_id: str, ttl_seconds: int = 3600) -> str:
    """The token videosdk-agents' `generate_avatar_credentials` signs with the agent's key."""
    now = int(time.time())
    payload = {
        "apikey": "agent-api-key",
        "permissions": ["allow_join"],
        "version": 2,
        "iat": now,
        "exp": now + ttl_seconds,
        "participantId": participant_id,
    }
    return jwt.encode(payload, "the-agent-secret-" + "z" * 32, algorithm="HS256")


def join_info(room: str, participant: str = "avatar_5f3a9c01") -> dict[str, Any]:
    info = AvatarJoinInfo(room, generate_avatar_credentials(participant), participant)
    return dataclasses.asdict(info)  # exactly what AvatarAudioOut posts (json=asdict(...))


class Launcher:
    def __init__(self, env: Env, operator: runner.Operator) -> None:
        self.env = env
        self.port = operator.settings.dispatcher_port

    def url(self, query: str = "", password: str | None = None) -> str:
        auth = f"avatar:{password}@" if password is not None else ""
        return f"http://{auth}127.0.0.1:{self.port}/launch{query}"

    async def post(
        self,
        payload: Any,
        *,
        query: str = "",
        bearer: str | None = BEARER,
        raw: bytes | None = None,
    ) -> tuple[int, dict[str, Any]]:
        headers = {"Authorization": f"Bearer {bearer}"} if bearer else {}
        data = raw if raw is not None else json.dumps(payload).encode()
        headers["Content-Type"] = "application/json"
        async with self.env.http.post(self.url(query), data=data, headers=headers) as response:
            return response.status, await response.json()


async def start(env: Env, tmp_path: Path, **overrides: Any) -> tuple[runner.Operator, Launcher]:
    token_file = tmp_path / "dispatcher-token"
    token_file.write_text(BEARER)
    values: dict[str, Any] = {
        "dispatcher_port": free_port(),
        "dispatcher_token_file": str(token_file),
        "dispatcher_namespace": NS,
        "dispatcher_session_template": {"avatar": {"renderer": "waveform"}},
        # a loaded 2-core machine must not turn a slow answer into a failed test: the budget
        # has its own test
        "dispatcher_answer_budget_seconds": 30.0,
    }
    values.update(overrides)
    operator = await env.start_operator(**values)
    return operator, Launcher(env, operator)


def live_sessions(env: Env) -> list[dict[str, Any]]:
    return env.list(api.PLURAL)


@pytest.mark.realcluster
async def test_the_stock_request_starts_a_session_that_joins(env: Env, tmp_path: Path) -> None:
    operator, launcher = await start(env, tmp_path)
    info = join_info("abcd-efgh-ijkl")
    name = api.session_name_for_room("abcd-efgh-ijkl", info["participant_id"])

    # ?wait=joined answers once the worker is in the room; here the worker's report is sent
    # the way the worker sends it (the simulated kubelet runs no worker process)
    answer = asyncio.create_task(launcher.post(info, query="?wait=joined"))
    session = await env.wait_session(name, phase_is("Starting"))
    assert not answer.done()
    await env.report(operator, name, {"phase": "Joined"})
    status, body = await asyncio.wait_for(answer, 10)
    assert status == 201, body
    assert body["phase"] == "Joined" and body["created"] is True
    assert (body["session"], body["namespace"]) == (name, NS)

    session = env.get(api.PLURAL, name)
    assert session is not None
    spec = session["spec"]
    assert spec["roomId"] == "abcd-efgh-ijkl" and spec["participantId"] == info["participant_id"]
    assert spec["avatar"]["renderer"] == "waveform"  # from the chart's session template
    assert spec["credentials"]["tokenSecretRef"] == {"name": f"{name}-caller-token", "key": "token"}
    assert "secretRef" not in spec["credentials"]
    assert session["status"]["tokenSource"] == "Caller"
    token_issued = next(c for c in session["status"]["conditions"] if c["type"] == "TokenIssued")
    assert token_issued["reason"] == "CallerToken"
    # the caller's token is what the worker mounts — and nowhere in the session
    worker_secret = env.get("secrets", manifests.secret_name(name))
    assert worker_secret is not None
    assert base64.b64decode(worker_secret["data"]["token"]).decode() == info["token"]
    assert info["token"] not in json.dumps(session)
    caller_secret = env.get("secrets", f"{name}-caller-token")
    assert caller_secret is not None
    assert caller_secret["metadata"]["ownerReferences"][0]["uid"] == session["metadata"]["uid"]
    pod = env.get("pods", manifests.pod_name(name))
    assert pod is not None
    env_vars = {e["name"]: e.get("value") for e in pod["spec"]["containers"][0]["env"]}
    assert env_vars["AVATAR_PARTICIPANT_ID"] == info["participant_id"]
    assert info["token"] not in json.dumps(pod)

    # the room ends: the worker's Secret and the caller's copy go with the Pod
    await env.report(operator, name, {"phase": "Ended", "endReason": "RoomEnded"})
    await env.wait_gone("pods", manifests.pod_name(name))
    await env.wait_gone("secrets", manifests.secret_name(name))
    await env.wait_gone("secrets", f"{name}-caller-token")


async def test_a_url_with_the_token_is_all_a_stock_agent_needs(env: Env, tmp_path: Path) -> None:
    """The agent's HTTP client turns the URL's user info into Basic auth (httpx does, as
    aiohttp here): no header to add in the agent's code."""
    _, launcher = await start(env, tmp_path)
    async with aiohttp.ClientSession() as client:
        url = launcher.url(password=BEARER)
        async with client.post(url, json=join_info("room-url")) as response:
            assert response.status == 201, await response.text()
        async with client.post(launcher.url(password="wrong" * 8), json=join_info("r2")) as resp:
            assert resp.status == 401
    assert len(live_sessions(env)) == 1


@pytest.mark.realcluster
async def test_repeated_posts_make_one_session(env: Env, tmp_path: Path) -> None:
    _, launcher = await start(env, tmp_path)
    info = join_info("room-again")
    answers = await asyncio.gather(*(launcher.post(info) for _ in range(5)))
    assert sorted(status for status, _ in answers) == [200, 200, 200, 200, 201]
    assert len({body["session"] for _, body in answers}) == 1
    assert len(live_sessions(env)) == 1
    # another participant in the same room is another avatar
    status, _ = await launcher.post(join_info("room-again", "avatar_second"))
    assert status == 201
    assert len(live_sessions(env)) == 2


@pytest.mark.realcluster
async def test_bad_input_is_refused_and_creates_nothing(env: Env, tmp_path: Path) -> None:
    _, launcher = await start(env, tmp_path, dispatcher_max_body_bytes=2048)
    expired = join_info("r-expired")
    expired["token"] = jwt.encode(
        {"participantId": expired["participant_id"], "exp": int(time.time()) - 10},
        "k" * 32,
        algorithm="HS256",
    )
    cases: list[tuple[dict[str, Any] | None, bytes | None, int, str]] = [
        ({"token": join_info("x")["token"]}, None, 400, "room_name: required"),
        ({**join_info("x"), "room_name": "no such room!"}, None, 400, "room_name"),
        ({**join_info("x"), "token": "not-a-jwt"}, None, 400, "token: not a JWT"),
        (expired, None, 422, "expired"),
        ({**join_info("x"), "participant_id": "avatar_other"}, None, 422, "is for participant"),
        (None, b"{oops", 400, "not JSON"),
        (None, json.dumps({**join_info("x"), "pad": "p" * 4096}).encode(), 413, "at most 2048"),
    ]
    for payload, raw, want, text in cases:
        status, body = await launcher.post(payload, raw=raw)
        assert status == want, (text, body)
        assert text in body["message"] and body["error"], body
    status, body = await launcher.post(join_info("x"), query="?wait=forever")
    assert status == 400 and "wait" in body["message"]
    assert live_sessions(env) == []
    assert [s for s in env.list("secrets") if "caller" in s["metadata"]["name"]] == []


async def test_no_bearer_no_session(env: Env, tmp_path: Path) -> None:
    _, launcher = await start(env, tmp_path)
    for bearer in (None, "wrong-token-" + "w" * 30):
        status, body = await launcher.post(join_info("room-auth"), bearer=bearer)
        assert status == 401 and body["error"] == "unauthorized"
    assert live_sessions(env) == []


@pytest.mark.realcluster
async def test_over_the_cap_is_429(env: Env, tmp_path: Path) -> None:
    operator, launcher = await start(env, tmp_path, dispatcher_max_sessions=2)
    for room in ("cap-1", "cap-2"):
        assert (await launcher.post(join_info(room)))[0] == 201
    status, body = await launcher.post(join_info("cap-3"))
    assert status == 429 and body["error"] == "too_many_sessions"
    assert "cap is 2" in body["message"]
    assert len(live_sessions(env)) == 2
    # sessions made by hand do not count; an ended one frees its place
    env.create({**_manual("by-hand")})
    name = api.session_name_for_room("cap-1", join_info("cap-1")["participant_id"])
    await env.wait_session(name, phase_is("Starting"))
    await env.report(operator, name, {"phase": "Ended", "endReason": "RoomEnded"})
    await env.wait_session(name, phase_is("Ended"))
    assert (await launcher.post(join_info("cap-3")))[0] == 201


async def test_the_rate_limit_is_per_caller(env: Env, tmp_path: Path) -> None:
    _, launcher = await start(env, tmp_path, dispatcher_rate_per_minute=3)
    answers = [await launcher.post(join_info("rate"), bearer=None) for _ in range(4)]
    assert [status for status, _ in answers] == [401, 401, 401, 429]
    assert answers[-1][1]["error"] == "rate_limited"


@pytest.mark.realcluster
async def test_no_gpu_that_fits_is_503_and_leaves_nothing(env: Env, tmp_path: Path) -> None:
    _, launcher = await start(
        env, tmp_path, dispatcher_session_template={"resources": {"vramMiB": 200_000}}
    )
    status, body = await launcher.post(join_info("too-big"))
    assert status == 503 and body["error"] == "unschedulable", body
    assert "200000 MiB" in body["message"] or "200,000" in body["message"], body
    await asyncio.sleep(0.3)
    assert live_sessions(env) == []
    assert [s for s in env.list("secrets") if "caller" in s["metadata"]["name"]] == []


@pytest.mark.realcluster
async def test_a_relaunch_after_the_room_ended_starts_afresh(env: Env, tmp_path: Path) -> None:
    operator, launcher = await start(env, tmp_path)
    info = join_info("room-twice")
    name = api.session_name_for_room("room-twice", info["participant_id"])
    assert (await launcher.post(info))[0] == 201
    first = env.get(api.PLURAL, name)
    assert first is not None
    await env.wait_session(name, phase_is("Starting"))
    await env.report(operator, name, {"phase": "Ended", "endReason": "RoomEnded"})
    await env.wait_session(name, phase_is("Ended"))
    status, body = await launcher.post(join_info("room-twice"))
    assert status == 201 and body["created"], body
    second = env.get(api.PLURAL, name)
    assert second is not None and second["metadata"]["uid"] != first["metadata"]["uid"]


@pytest.mark.realcluster
async def test_a_session_made_by_hand_is_not_taken_over(env: Env, tmp_path: Path) -> None:
    _, launcher = await start(env, tmp_path)
    info = join_info("room-hand")
    name = api.session_name_for_room("room-hand", info["participant_id"])
    env.create({**_manual(name), "spec": {"roomId": "room-hand"}})
    status, body = await launcher.post(info)
    assert status == 409 and "not created by the dispatcher" in body["message"]


def _manual(name: str) -> dict[str, Any]:
    return {
        "apiVersion": api.API_VERSION,
        "kind": api.KIND,
        "metadata": {"name": name, "namespace": NS},
        "spec": {"roomId": f"room-{name}"},
    }


def test_the_error_body_is_json() -> None:
    error = launch.LaunchError(429, "rate_limited", "slow down", {"Retry-After": "3"})
    response = error.response()
    assert response.status == 429 and response.headers["Retry-After"] == "3"
    assert json.loads(response.text or "") == {"error": "rate_limited", "message": "slow down"}


@pytest.mark.parametrize("wait", ["joined"])
async def test_wait_joined_times_out_with_504(env: Env, tmp_path: Path, wait: str) -> None:
    _, launcher = await start(env, tmp_path, dispatcher_join_wait_seconds=1.0)
    status, body = await launcher.post(join_info("room-slow"), query=f"?wait={wait}")
    assert status == 504 and body["error"] == "join_timeout", body
    assert "kubectl -n agents describe avs" in body["message"]
    assert len(live_sessions(env)) == 1  # created; it keeps trying until its join timeout


async def test_a_session_with_a_token_secret_waits_for_a_good_token(
    env: Env, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`credentials.tokenSecretRef` without the dispatcher: a missing Secret or a refused token
    holds the session in Scheduled saying why; a good token then starts it."""
    from avatar_operator.reconciler import sweeper

    monkeypatch.setattr(sweeper, "RETRY_SCHEDULED_SECONDS", 0.2)
    operator = await env.start_operator()
    ref = {"name": "my-token", "key": "jwt"}
    env.create(
        {**_manual("own"), "spec": {"roomId": "room-own", "credentials": {"tokenSecretRef": ref}}}
    )

    def token_issued(reason: str) -> Any:
        def check(obj: dict[str, Any]) -> bool:
            conditions = (obj.get("status") or {}).get("conditions") or []
            return any(c["type"] == "TokenIssued" and c["reason"] == reason for c in conditions)

        return check

    session = await env.wait_session("own", token_issued("TokenSecretNotFound"))
    assert session["status"]["phase"] == "Scheduled"
    assert (
        "Secret agents/my-token (credentials.tokenSecretRef) not found"
        in (session["status"]["message"])
    )

    def secret(token: str) -> dict[str, Any]:
        return {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "my-token", "namespace": NS},
            "data": {"jwt": base64.b64encode(token.encode()).decode()},
        }

    stale = jwt.encode(
        {"participantId": "avatar_own", "exp": int(time.time()) - 60}, "k" * 32, algorithm="HS256"
    )
    env.create(secret(stale))
    session = await env.wait_session("own", token_issued("CallerTokenRefused"))
    assert "expired" in session["status"]["message"]
    assert stale not in json.dumps(session)

    good = generate_avatar_credentials("avatar_own")
    env.create(secret(good))  # applied over the stale one
    session = await env.wait_session("own", phase_is("Starting"))
    assert session["status"]["participantId"] == "avatar_own"  # taken from the token
    assert session["status"]["tokenSource"] == "Caller"
    worker_secret = env.get("secrets", manifests.secret_name("own"))
    assert worker_secret is not None
    assert base64.b64decode(worker_secret["data"]["token"]).decode() == good
    operator_events = [e for e in env.list("events") if e["reason"] == "TokenSecretNotFound"]
    assert operator_events and good not in json.dumps(env.list("events"))

    # a Secret the user made is theirs: collecting the session leaves it alone
    await env.report(operator, "own", {"phase": "Ended", "endReason": "RoomEnded"})
    await env.wait_gone("secrets", manifests.secret_name("own"))
    assert env.get("secrets", "my-token") is not None


async def test_a_token_signed_with_the_operators_key_needs_no_bearer(
    env: Env, tmp_path: Path
) -> None:
    """dispatcher_accept_signed_tokens: an agent of the operator's own VideoSDK account (the
    credentials Secret the env made: test-api-key) launches with the plain URL."""
    _, launcher = await start(env, tmp_path, dispatcher_accept_signed_tokens=True)
    now = int(time.time())

    def signed(secret: str, apikey: str = API_KEY, room: str = "room-signed") -> Any:
        claims = {
            "apikey": apikey,
            "permissions": ["allow_join"],
            "version": 2,
            "iat": now,
            "exp": now + 3600,
            "participantId": "avatar_signed",
        }
        token = jwt.encode(claims, secret, algorithm="HS256")
        return {"room_name": room, "token": token, "participant_id": "avatar_signed"}

    ours = SECRET  # the environment's videosdk-credentials
    status, body = await launcher.post(signed(ours), bearer=None)
    assert status == 201, body
    for payload in (
        signed("another-account-" + "x" * 30, room="r-other"),  # someone else's key
        signed(ours, apikey="another-key", room="r-key"),  # our secret, another API key
        {"room_name": "r-none"},  # no token at all
    ):
        status, body = await launcher.post(payload, bearer=None)
        assert status == 401 and "operator's VideoSDK key" in body["message"], body
    # the bearer token still works for tokens signed elsewhere
    assert (await launcher.post(join_info("room-bearer")))[0] == 201
    assert len(live_sessions(env)) == 2


async def test_an_api_refusal_is_a_json_503_that_says_what_failed(env: Env, tmp_path: Path) -> None:
    """A dispatcher namespace that does not exist: the API refuses the create; the caller gets
    JSON that names the step, never a bare 500."""
    _, launcher = await start(env, tmp_path, dispatcher_namespace="nowhere")
    status, body = await launcher.post(join_info("room-nowhere"))
    assert status == 503 and body["error"] == "api_error", body
    assert "404" in body["message"] and "nowhere" in body["message"]


def _forged(exp: str, room: str, permissions: str = '["allow_join"]') -> str:
    """A JWT whose payload JSON says what `json.dumps` would never write (NaN, Infinity)."""

    def part(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    payload = f'{{"participantId":"avatar_5f3a9c01","permissions":{permissions},"exp":{exp}}}'
    return ".".join([part(b'{"alg":"HS256","typ":"JWT"}'), part(payload.encode()), "c2ln"])


async def test_hostile_input_is_refused_before_anything_is_created(
    env: Env, tmp_path: Path
) -> None:
    """Each class of input that once crashed a handler or created objects it should not: a
    refusal that names the field, never a 500, and no session or Secret left behind."""
    _, launcher = await start(env, tmp_path)
    no_permissions = jwt.encode(
        {"participantId": "avatar_5f3a9c01", "exp": int(time.time()) + 3600},
        "k" * 32,
        algorithm="HS256",
    )
    cases: list[tuple[dict[str, Any] | None, bytes | None, str, int, str]] = [
        ({**join_info("h1"), "token": _forged("NaN", "h1")}, None, "", 422, "exp claim"),
        ({**join_info("h2"), "token": _forged("Infinity", "h2")}, None, "", 422, "exp claim"),
        ({**join_info("h3"), "token": _forged("1e400", "h3")}, None, "", 422, "exp claim"),
        ({**join_info("h4"), "token": no_permissions}, None, "", 422, "no permissions claim"),
        (None, b"[" * 8000, "", 400, "nested"),
        (None, b'{"room_name": ' + b"[" * 3000 + b"]" * 3000 + b"}", "", 400, "nested"),
        (None, b'{"room_name": "h5", "token": NaN}', "", 400, "NaN"),
        (join_info("h6"), None, "?wait=joined&timeout=abc", 400, "timeout"),
        (join_info("h7"), None, "?wait=joined&timeout=-5", 400, "timeout"),
        (join_info("h8"), None, "?wait=joined&timeout=inf", 400, "timeout"),
    ]
    for payload, raw, query, want, text in cases:
        status, body = await launcher.post(payload, raw=raw, query=query)
        assert status == want and text in body["message"], (text, status, body)
    assert live_sessions(env) == []
    assert [s for s in env.list("secrets") if "caller" in s["metadata"]["name"]] == []


async def test_unauthenticated_requests_do_not_lock_out_a_valid_caller(
    env: Env, tmp_path: Path
) -> None:
    """Authentication comes before the rate limit, and refused requests are limited on their
    own: a flood of bad tokens from an address leaves a valid caller at that address served."""
    _, launcher = await start(env, tmp_path, dispatcher_rate_per_minute=3)
    answers = [await launcher.post(join_info("flood"), bearer=None) for _ in range(6)]
    assert [status for status, _ in answers] == [401, 401, 401, 429, 429, 429]
    assert "refused requests" in answers[-1][1]["message"]
    status, body = await launcher.post(join_info("valid-caller"))
    assert status == 201, body


async def test_every_answer_comes_within_the_budget(env: Env, tmp_path: Path) -> None:
    """The stock client gives up after 5 s: when the operator cannot place a session in the
    answer budget (here: admission hangs), the caller gets 503 + Retry-After in time and the
    session it would have had is deleted, not left to start behind its back."""
    operator, launcher = await start(env, tmp_path, dispatcher_answer_budget_seconds=0.5)

    async def hang(body: Any) -> None:
        await asyncio.sleep(30)

    operator.reconciler.admit = hang  # type: ignore[method-assign]
    began = time.monotonic()
    status, body = await launcher.post(join_info("room-hung"))
    took = time.monotonic() - began
    assert status == 503 and body["error"] == "not_placed", body
    assert took < 2.0, took
    async with asyncio.timeout(5):
        while live_sessions(env):
            await asyncio.sleep(0.05)


async def test_a_caller_that_goes_away_leaves_nothing_behind(env: Env, tmp_path: Path) -> None:
    """`?wait=joined` and the client hangs up first: what the request created is deleted."""
    _, launcher = await start(env, tmp_path)
    timeout = aiohttp.ClientTimeout(total=0.5)
    with contextlib.suppress(TimeoutError):
        async with aiohttp.ClientSession(timeout=timeout) as http:
            await http.post(
                launcher.url("?wait=joined"),
                json=join_info("room-gone"),
                headers={"Authorization": f"Bearer {BEARER}"},
            )
    async with asyncio.timeout(5):
        while live_sessions(env):
            await asyncio.sleep(0.05)
