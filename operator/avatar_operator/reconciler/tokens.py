"""Where a session's join token comes from: minted from the VideoSDK key, or its creator's.

`spec.credentials.tokenSource` says which. Minting reads the VideoSDK API key and secret from a
Secret (the chart's default, or `credentials.secretRef`), cached for a few seconds so that a burst
of sessions reads it once. A caller's token (`credentials.tokenSecretRef`) is read from the
session's namespace and checked for what it says about itself (room, participant, expiry) before
a worker gets it. Every way this can fail raises `CredentialsMissing` with a message that says
what to do; the session then waits in phase Scheduled, its GPU reserved.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Callable
from typing import NamedTuple

from avatar_operator import kube
from avatar_operator import settings as settings_mod
from avatar_sdk import api, credentials

CREDENTIALS_CACHE_SECONDS = 10.0


class CredentialsMissing(Exception):
    """No usable join token: the VideoSDK credentials Secret (or a caller's token Secret) is
    missing, incomplete or refused. The message says how to fix it; `reason` names the case."""

    def __init__(self, message: str, reason: str = "CredentialsNotFound") -> None:
        super().__init__(message)
        self.reason = reason


class JoinToken(NamedTuple):
    token: str
    participant_id: str
    expires_at: int  # Unix seconds


class TokenSource:
    """Join tokens for sessions, from the API's Secrets."""

    def __init__(
        self,
        kube_: kube.Kube,
        settings: settings_mod.OperatorSettings,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._kube = kube_
        self._settings = settings
        self._clock = clock
        self._cache: dict[tuple[str, str], tuple[float, credentials.VideoSDKCredentials]] = {}

    async def join_token(
        self,
        spec: api.AvatarSessionSpec,
        namespace: str,
        *,
        participant_id: str,
        requested_participant: str | None,
    ) -> JoinToken:
        """The token the worker joins with; `participant_id` is the one to mint for,
        `requested_participant` the one a caller's token must name (if any)."""
        if spec.credentials.token_source is api.TokenSource.CALLER:
            return await self._caller_token(spec, namespace, requested_participant)
        creds = await self._credentials(spec, namespace)
        minted = credentials.mint_join_token(
            creds,
            room_id=spec.room_id,
            participant_id=participant_id,
            ttl_seconds=spec.credentials.token_ttl_seconds,
        )
        return JoinToken(minted.token, participant_id, minted.expires_at)

    async def _caller_token(
        self, spec: api.AvatarSessionSpec, namespace: str, participant_id: str | None
    ) -> JoinToken:
        """The join token its creator signed (credentials.tokenSecretRef), checked for what a
        token says about itself."""
        ref = spec.credentials.token_secret_ref
        assert ref is not None
        where = f"Secret {namespace}/{ref.name} (credentials.tokenSecretRef)"
        try:
            secret = await self._kube.read_secret(namespace, ref.name)
        except kube.NotFound:
            raise CredentialsMissing(
                f"{where} not found: it holds the join token the session's creator signed",
                "TokenSecretNotFound",
            ) from None
        except kube.Forbidden:
            raise CredentialsMissing(
                f"the operator may not read {where}: grant it get on secrets in {namespace}",
                "TokenSecretNotFound",
            ) from None
        try:
            token = base64.b64decode((secret.get("data") or {})[ref.key]).decode().strip()
        except (KeyError, ValueError, UnicodeDecodeError):
            token = ""
        if not token:
            raise CredentialsMissing(
                f"{where} has no non-empty key {ref.key!r}", "TokenSecretNotFound"
            )
        try:
            claims = credentials.check_caller_token(
                token, room_id=spec.room_id, participant_id=participant_id, now=time.time()
            )
        except credentials.CredentialsError as exc:
            raise CredentialsMissing(
                f"the join token in {where} is refused: {exc}", "CallerTokenRefused"
            ) from None
        assert claims.participant_id is not None and claims.expires_at is not None
        return JoinToken(token, claims.participant_id, claims.expires_at)

    async def _credentials(
        self, spec: api.AvatarSessionSpec, namespace: str
    ) -> credentials.VideoSDKCredentials:
        ref = spec.credentials.secret_ref
        if ref is None:
            where = (self._settings.operator_namespace, self._settings.default_credentials_secret)
            keys = (self._settings.default_api_key_key, self._settings.default_secret_key)
        else:
            where = (namespace, ref.name)
            keys = (ref.api_key_key, ref.secret_key)
        cached = self._cache.get(where)
        if cached and self._clock() - cached[0] < CREDENTIALS_CACHE_SECONDS:
            return cached[1]
        hint = (
            f"create it: kubectl -n {where[0]} create secret generic {where[1]} "
            f"--from-literal={keys[0]}=<VideoSDK API key> --from-literal={keys[1]}=<secret>"
        )
        try:
            secret = await self._kube.read_secret(*where)
        except kube.NotFound:
            raise CredentialsMissing(f"Secret {where[0]}/{where[1]} not found; {hint}") from None
        except kube.Forbidden:
            raise CredentialsMissing(
                f"the operator may not read Secret {where[0]}/{where[1]}: grant it get on "
                "secrets there (the chart does for its own namespace)"
            ) from None
        data = secret.get("data") or {}
        try:
            values = [base64.b64decode(data[k]).decode() for k in keys]
        except UnicodeDecodeError as exc:
            raise CredentialsMissing(
                f"Secret {where[0]}/{where[1]}: {keys[0]!r} and {keys[1]!r} must be text "
                "(the VideoSDK dashboard shows both as text)"
            ) from exc
        except (KeyError, ValueError):
            values = []
        try:
            creds = credentials.VideoSDKCredentials(*values)
        except (TypeError, ValueError) as exc:
            raise CredentialsMissing(
                f"Secret {where[0]}/{where[1]} lacks a non-empty {keys[0]!r} and "
                f"{keys[1]!r}; {hint}"
            ) from exc
        self._cache[where] = (self._clock(), creds)
        return creds
