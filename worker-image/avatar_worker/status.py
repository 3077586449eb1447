"""Reports the worker's state into its own AvatarSession's status.

The media loop only ever calls `StatusReporter.joined/playback/ended`, which update an
in-memory picture and return at once. One background task writes that picture at most once per
`min_interval` (1 s): updates in between coalesce into the next write, so a busy session costs
one request a second and a stalled server never blocks a frame. A failed write is retried with
backoff; the fields it carried stay pending.

A write is a JSON merge patch to `/apis/avatar-operator.dev/v1alpha1/namespaces/NS/
avatarsessions/NAME/status` with a bearer token — the Kubernetes status-subresource request.
In a pod it goes to the operator's status relay (`AVATAR_STATUS_URL`, credential from the
mounted `AVATAR_STATUS_TOKEN_FILE`), which writes the status for the worker; the worker holds no
Kubernetes credentials. The relay serves TLS: its certificate and host name are verified against
the CA from the same Secret (`AVATAR_STATUS_CA_FILE`) and nothing else, or against the system's
trust store when no CA is given. A relay that fails verification is never sent the credential
(the handshake fails before the request); the write is logged and retried like any other.
The relay accepts only the fields a worker may report (`avatar_sdk.reports.REPORTABLE`: phase
Joined/Ended, playback, joinedAt, endedAt, endReason RoomEnded/AgentLeft/Error, fps,
vramUsedMiB, syncErrorMs); conditions are the operator's to derive. For local runs the same
request can go straight to an API server: `AVATAR_KUBE_API` (URL) with `AVATAR_KUBE_TOKEN_FILE`,
`AVATAR_KUBE_CA_FILE`, `AVATAR_KUBE_INSECURE=1`, or the in-cluster service account when one is
mounted.

The token is re-read for every request (it may rotate) and is never logged.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import ssl
import time
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any, NamedTuple

import aiohttp

from avatar_sdk import api, reports, timestamps

logger = logging.getLogger(__name__)

SA_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
MERGE_PATCH = "application/merge-patch+json"
DEFAULT_MIN_INTERVAL = 1.0  # s between writes
REQUEST_TIMEOUT = 10.0  # s per request
STANDBY_RETRY_SECONDS = 0.2  # after a 503 from a standby operator replica (plus jitter)…
STANDBY_RETRIES = 8  # …this many times in a row, then the usual backoff (a failover is on)


class KubeApi(NamedTuple):
    """Where and how to reach the status endpoint (the relay, or an API server)."""

    url: str
    token_file: str | None = None
    ca_file: str | None = None
    insecure: bool = False
    token: str | None = None  # the credential itself (a warm worker's, from its assignment)

    @classmethod
    def for_relay(
        cls,
        status_url: str,
        token_file: str | None,
        ca_file: str | None = None,
        *,
        token: str | None = None,
    ) -> KubeApi:
        """The operator's status relay (what the operator writes into the worker's env)."""
        return cls(url=status_url.rstrip("/"), token_file=token_file, ca_file=ca_file, token=token)

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> KubeApi | None:
        """The override (`AVATAR_KUBE_API`…) or the in-cluster config; None outside both."""
        if environ.get("AVATAR_KUBE_API"):
            return cls(
                url=environ["AVATAR_KUBE_API"].rstrip("/"),
                token_file=environ.get("AVATAR_KUBE_TOKEN_FILE") or None,
                ca_file=environ.get("AVATAR_KUBE_CA_FILE") or None,
                insecure=environ.get("AVATAR_KUBE_INSECURE", "") in ("1", "true", "yes"),
            )
        host, port = environ.get("KUBERNETES_SERVICE_HOST"), environ.get("KUBERNETES_SERVICE_PORT")
        if host and port:
            host = f"[{host}]" if ":" in host else host
            return cls(
                url=f"https://{host}:{port}",
                token_file=f"{SA_DIR}/token",
                ca_file=f"{SA_DIR}/ca.crt",
            )
        return None

    def __repr__(self) -> str:
        return f"KubeApi(url={self.url!r})"


class StatusWriteError(Exception):
    """The API server refused a status write (the message never holds the token)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status


class TrustError(Exception):
    """The CA file the endpoint is to be verified with cannot be loaded."""


class StatusReporter:
    """Coalesces the worker's state into ≤ 1 status write a second."""

    def __init__(
        self,
        api_config: KubeApi,
        *,
        namespace: str,
        name: str,
        min_interval: float = DEFAULT_MIN_INTERVAL,
    ) -> None:
        self._api = api_config
        self._path = (
            f"/apis/{api.GROUP}/{api.VERSION}/namespaces/{namespace}/{api.PLURAL}/{name}/status"
        )
        self._min_interval = min_interval
        self._fields: dict[str, Any] = {}  # status fields to write (merge-patch form)
        self._dirty: set[str] = set()
        self._wake = asyncio.Event()
        self._session: aiohttp.ClientSession | None = None
        self._ssl_context: ssl.SSLContext | None = None  # from the CA file, once it loads
        self._write_atask: asyncio.Task[None] | None = None
        self._last_write = -float("inf")
        self._closing = False
        self.writes = 0
        self.failures = 0

    # -----------------------------------------------------------------------------------------
    # called from the media loop: never blocks

    def joined(self, at: datetime | None = None) -> None:
        self._set("phase", api.Phase.JOINED.value)
        self._set("joinedAt", timestamps.format(at or timestamps.now()))

    def playback(
        self,
        *,
        speaking: bool,
        segments: int,
        interrupts: int,
        position: float,
        last_activity_at: datetime | None,
        fps: float | None = None,
        vram_used_mib: int | None = None,
        sync_error_ms: float | None = None,
    ) -> None:
        state = api.PlaybackState.SPEAKING if speaking else api.PlaybackState.IDLE
        playback = api.Playback(
            state=state,
            segments=segments,
            interrupts=interrupts,
            position=max(0.0, position),
            last_activity_at=last_activity_at.replace(microsecond=0) if last_activity_at else None,
        )
        self._set("playback", playback.to_wire())
        if fps is not None:
            self._set("fps", fps)
        if vram_used_mib is not None:
            self._set("vramUsedMiB", vram_used_mib)
        if sync_error_ms is not None:
            self._set("syncErrorMs", sync_error_ms)

    def ended(self, reason: api.EndReason | None, at: datetime | None = None) -> None:
        """The session is over; `reason` is reported when it is one a worker may report."""
        self._set("phase", api.Phase.ENDED.value)
        self._set("endedAt", timestamps.format(at or timestamps.now()))
        if reason in reports.WORKER_END_REASONS:
            self._set("endReason", reason.value)

    # -----------------------------------------------------------------------------------------

    def start(self) -> None:
        if self._write_atask is None:
            self._write_atask = asyncio.create_task(self._write_loop(), name="status-writer")

    async def aclose(self, flush_timeout: float = 5.0) -> None:
        """Write what is pending (within `flush_timeout` seconds), then stop."""
        self._closing = True
        self._wake.set()
        if self._write_atask is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._write_atask), flush_timeout)
            except TimeoutError:
                logger.warning("final status write timed out")
                self._write_atask.cancel()
                await asyncio.gather(self._write_atask, return_exceptions=True)
        if self._session is not None:
            await self._session.close()

    @property
    def pending(self) -> bool:
        return bool(self._dirty)

    @property
    def reported(self) -> dict[str, Any]:
        """Everything set so far (written or pending)."""
        return dict(self._fields)

    def _set(self, key: str, value: Any) -> None:
        if self._fields.get(key) != value:
            self._fields[key] = value
            self._dirty.add(key)
            self._wake.set()

    async def _write_loop(self) -> None:
        backoff = self._min_interval
        standby_misses = 0
        while True:
            if not self.pending:
                if self._closing:
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            wait = self._last_write + self._min_interval - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            fields = {k: self._fields[k] for k in self._dirty}
            self._dirty.clear()
            self._last_write = time.monotonic()
            try:
                await self._request("PATCH", self._path, {"status": fields})
                self.writes += 1
                backoff = self._min_interval
                standby_misses = 0
            except (
                StatusWriteError,
                TrustError,
                aiohttp.ClientError,
                TimeoutError,
                OSError,
            ) as exc:
                self.failures += 1
                self._log_failure(exc)
                self._dirty |= fields.keys()  # the newest values go out next time
                if isinstance(exc, StatusWriteError) and exc.status in (400, 403, 413, 422):
                    self._dirty.clear()  # refused for what it says: resending cannot help
                if isinstance(exc, StatusWriteError) and exc.status == 503:
                    # a standby replica behind the relay's Service: a new connection is
                    # balanced afresh and likely reaches the leader, so retry soon; during a
                    # failover (no leader yet) fall back to the backoff
                    standby_misses += 1
                    await self._reconnect()
                    if standby_misses <= STANDBY_RETRIES:
                        await asyncio.sleep(STANDBY_RETRY_SECONDS * (1 + random.random()))
                        continue
                # closing: retry briskly until aclose's flush timeout gives up on us
                await asyncio.sleep(min(backoff, 0.5) if self._closing else backoff)
                backoff = min(backoff * 2, 30.0)

    def _log_failure(self, exc: Exception) -> None:
        if isinstance(exc, aiohttp.ClientConnectorCertificateError | TrustError):
            # the handshake failed: no request, so no credential, went out
            cert_error = getattr(exc, "certificate_error", exc)
            logger.error(
                "status endpoint not trusted, nothing sent",
                extra={
                    "url": self._api.url,
                    "ca_file": self._api.ca_file or "the system trust store",
                    "error": str(cert_error)[:300],
                },
            )
            return
        logger.warning("status write failed", extra={"error": str(exc)[:300], "path": self._path})

    async def _reconnect(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _request(self, method: str, path: str, body: Any = None) -> dict[str, Any]:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT)
            )
        headers = {"Accept": "application/json"}
        token = self._read_token()
        if token:
            headers["Authorization"] = f"Bearer {token}"
        data = None
        if body is not None:
            headers["Content-Type"] = MERGE_PATCH
            data = json.dumps(body)
        async with self._session.request(
            method, self._api.url + path, data=data, headers=headers, ssl=self._ssl()
        ) as response:
            text = await response.text()
            if response.status >= 400:
                raise StatusWriteError(response.status, _api_message(text))
            try:
                parsed = json.loads(text) if text else {}
            except ValueError:
                parsed = {}
            return parsed if isinstance(parsed, dict) else {}

    def _read_token(self) -> str | None:
        if self._api.token is not None:
            return self._api.token
        if not self._api.token_file:
            return None
        try:
            return Path(self._api.token_file).read_text().strip() or None
        except OSError as exc:
            logger.warning("cannot read the API token", extra={"error": type(exc).__name__})
            return None

    def _ssl(self) -> ssl.SSLContext | bool:
        """How the endpoint is verified: by the CA file alone when one is given (never the
        system's trust store instead, even while the file cannot be read), else by the system's
        trust store."""
        if not self._api.url.startswith("https"):
            return True
        if self._api.insecure:
            return False
        if not self._api.ca_file:
            return True
        if self._ssl_context is None:
            try:
                self._ssl_context = ssl.create_default_context(cafile=self._api.ca_file)
            except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
                raise TrustError(f"cannot load the CA file: {exc}") from None
        return self._ssl_context


def _api_message(text: str) -> str:
    """The `message` of a Kubernetes Status body, or the start of the body."""
    try:
        parsed = json.loads(text)
        if isinstance(parsed, dict) and isinstance(parsed.get("message"), str):
            return str(parsed["message"])[:300]
    except ValueError:
        pass
    return text[:300]
