"""Join tokens: the payload videosdk-agents signs, scoped to one room; secrets never shown."""

from __future__ import annotations

import base64
import logging
import time

import jwt
import pytest

from avatar_sdk import credentials as c

CREDS = c.VideoSDKCredentials("key-0123456789", "s" * 40)


def test_token_payload_matches_generate_avatar_credentials_plus_room() -> None:
    token = c.mint_join_token(
        CREDS, room_id="abcd-efgh-ijkl", participant_id="avatar_1", ttl_seconds=600, now=1000
    )
    claims = jwt.decode(
        token.token, CREDS.secret, algorithms=["HS256"], options={"verify_exp": False}
    )
    assert claims == {
        "apikey": "key-0123456789",
        "permissions": ["allow_join"],
        "version": 2,
        "iat": 1000,
        "exp": 1600,
        "participantId": "avatar_1",
        "roomId": "abcd-efgh-ijkl",
    }
    assert jwt.get_unverified_header(token.token)["alg"] == "HS256"
    assert token.expires_at == 1600


def test_token_verifies_and_reads_back() -> None:
    token = c.mint_join_token(CREDS, room_id="r", participant_id="p")
    claims = c.verify_join_token(token.token, CREDS)
    assert (claims.room_id, claims.participant_id, claims.permissions) == (
        "r",
        "p",
        ("allow_join",),
    )


def test_expired_or_foreign_tokens_do_not_verify() -> None:
    old = c.mint_join_token(CREDS, room_id="r", participant_id="p", ttl_seconds=60, now=0)
    with pytest.raises(c.CredentialsError, match="expired"):
        c.verify_join_token(old.token, CREDS)
    other = c.VideoSDKCredentials("key-0123456789", "t" * 40)
    fresh = c.mint_join_token(other, room_id="r", participant_id="p")
    with pytest.raises(c.CredentialsError, match="does not verify"):
        c.verify_join_token(fresh.token, CREDS)


def test_read_claims_without_the_signers_secret() -> None:
    foreign = jwt.encode({"apikey": "k", "participantId": "p", "nbf": 5, "exp": "soon"}, "x" * 32)
    claims = c.read_claims(foreign)
    assert claims.participant_id == "p" and claims.not_before == 5
    assert claims.expires_at is None  # a non-numeric exp is not trusted as a number
    with pytest.raises(c.CredentialsError, match="not a JWT"):
        c.read_claims("not-a-token")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"room_id": "", "participant_id": "p"}, "room_id is empty"),
        ({"room_id": "r", "participant_id": ""}, "participant_id is empty"),
        ({"room_id": "r", "participant_id": "p", "ttl_seconds": 5}, "ttl_seconds"),
        ({"room_id": "r", "participant_id": "p", "ttl_seconds": 10**6}, "ttl_seconds"),
    ],
)
def test_bad_requests_are_refused(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(c.CredentialsError, match=message):
        c.mint_join_token(CREDS, **kwargs)  # deliberately wrong input


def test_empty_credentials_are_refused() -> None:
    with pytest.raises(c.CredentialsError, match="API key is empty"):
        c.VideoSDKCredentials(" ", "s")
    with pytest.raises(c.CredentialsError, match="secret is empty"):
        c.VideoSDKCredentials("k", "")


def test_secrets_and_tokens_never_show_in_reprs_or_logs(caplog: pytest.LogCaptureFixture) -> None:
    token = c.mint_join_token(CREDS, room_id="r", participant_id="p")
    logger = logging.getLogger("test")
    with caplog.at_level(logging.INFO):
        logger.info("minted %s with %s", token, CREDS)
        logger.info("%r %r", token, CREDS)
    shown = caplog.text + repr(token) + str(token) + repr(CREDS) + str(CREDS)
    assert CREDS.secret not in shown
    assert token.token not in shown
    assert token.token.split(".")[2] not in shown
    assert "key-0123456789" not in repr(CREDS)


def test_participant_ids_look_like_videosdk_agents_own() -> None:
    pid = c.generate_participant_id()
    assert pid.startswith("avatar_") and len(pid) == len("avatar_") + 8
    assert pid != c.generate_participant_id()


@pytest.mark.parametrize("exp", ["NaN", "Infinity", "-Infinity", "1e400"])
def test_a_non_finite_claim_is_refused_naming_it(exp: str) -> None:
    """PyJWT decodes a payload's JSON with `json.loads`, which takes NaN, Infinity and 1e400
    (as inf): the claim is refused by name instead of crashing `int()` (an HTTP 500, or a
    session retried with a traceback forever)."""
    header = base64.urlsafe_b64encode(b'{"alg":"HS256","typ":"JWT"}').rstrip(b"=")
    body = f'{{"participantId":"p","permissions":["allow_join"],"exp":{exp}}}'.encode()
    payload = base64.urlsafe_b64encode(body).rstrip(b"=")
    token = b".".join([header, payload, b"c2ln"]).decode()
    with pytest.raises(c.CredentialsError, match="exp claim is not a finite number"):
        c.read_claims(token)


def test_a_token_without_permissions_may_not_join() -> None:
    token = jwt.encode(
        {"participantId": "p", "exp": int(time.time()) + 3600}, "x" * 32, algorithm="HS256"
    )
    with pytest.raises(c.CredentialsError, match="no permissions claim"):
        c.check_caller_token(token, room_id="r", participant_id="p", now=time.time())
