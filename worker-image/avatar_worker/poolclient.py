"""A warm pool worker waits for its session: the long-poll of `avatar_sdk.assignment`.

The worker asks the operator's relay (TLS, verified against the relay's CA only) for its
assignment and holds the request open; the first request tells the operator the worker is
ready. Standby replicas (503) and lost connections are retried with a short jittered backoff —
the worker keeps its prepared renderer through an operator failover; a 410 Gone (its pool let
it go) ends the wait without an assignment, and so does `stop` (SIGTERM: the Pod is deleted).
The credential is read from its file once, and never logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import ssl
from pathlib import Path

import aiohttp
import pydantic

from avatar_sdk import assignment

logger = logging.getLogger(__name__)

RETRY_MIN_SECONDS = 0.2
RETRY_MAX_SECONDS = 5.0
REFUSED_LIMIT = 5  # 401s in a row before the worker gives up (a wrong credential stays wrong)


class AssignmentError(RuntimeError):
    """The worker cannot get its assignment: the message says why and what to check."""


class PoolClient:
    """Where and how a pool worker asks for its assignment."""

    def __init__(
        self,
        url: str,
        *,
        namespace: str,
        worker: str,
        token_file: str,
        ca_file: str | None = None,
        wait_seconds: int = assignment.DEFAULT_WAIT_SECONDS,
    ) -> None:
        self._url = url.rstrip("/") + assignment.path_for(namespace, worker)
        self._token_file = token_file
        self._ca_file = ca_file
        self._wait = max(1, min(wait_seconds, assignment.MAX_WAIT_SECONDS))

    def __repr__(self) -> str:
        return f"PoolClient(url={self._url!r})"

    def _token(self) -> str:
        try:
            token = Path(self._token_file).read_text().strip()
        except OSError as exc:
            raise AssignmentError(
                f"cannot read the pool credential {self._token_file}: {exc.strerror}"
            ) from None
        if not token:
            raise AssignmentError(f"the pool credential file {self._token_file} is empty")
        return token

    def _ssl(self) -> ssl.SSLContext | bool:
        if not self._url.startswith("https") or not self._ca_file:
            return True
        try:
            return ssl.create_default_context(cafile=self._ca_file)
        except (OSError, ValueError) as exc:
            raise AssignmentError(
                f"cannot load the relay's CA file {self._ca_file}: {exc}"
            ) from None

    async def wait(self, stop: asyncio.Event) -> assignment.Assignment | None:
        """The assignment once a session claims this worker; None when the pool let it go or
        `stop` was set first. Raises AssignmentError when it can never come."""
        headers = {"Authorization": f"Bearer {self._token()}", "Accept": "application/json"}
        context = self._ssl()
        timeout = aiohttp.ClientTimeout(total=self._wait + 15, connect=10)
        delay = RETRY_MIN_SECONDS
        refused = 0
        async with aiohttp.ClientSession(timeout=timeout) as http:
            while not stop.is_set():
                request = asyncio.ensure_future(self._poll(http, headers, context))
                stopped = asyncio.ensure_future(stop.wait())
                await asyncio.wait({request, stopped}, return_when=asyncio.FIRST_COMPLETED)
                stopped.cancel()
                if not request.done():
                    request.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await request
                    return None
                status, body = request.result()
                if status == 200:
                    try:
                        return assignment.Assignment.model_validate(json.loads(body))
                    except (ValueError, pydantic.ValidationError) as exc:
                        raise AssignmentError(
                            f"the relay answered an assignment that is not valid: {exc}"
                        ) from None
                if status == 204:
                    delay = RETRY_MIN_SECONDS
                    continue
                if status in (404, 410):
                    logger.info("the pool released this worker", extra={"status": status})
                    return None
                if status == 401:
                    refused += 1
                    if refused >= REFUSED_LIMIT:
                        raise AssignmentError(
                            "the relay refused the pool credential "
                            f"{refused} times: is the operator's relay key the one this "
                            "worker's Secret was made with?"
                        )
                else:
                    refused = 0
                if status not in (0, 401, 503):
                    logger.warning("assignment poll answered", extra={"status": status})
                await _sleep_or_stop(stop, delay * random.uniform(0.5, 1.5))
                delay = min(RETRY_MAX_SECONDS, delay * 2)
        return None

    async def _poll(
        self,
        http: aiohttp.ClientSession,
        headers: dict[str, str],
        context: ssl.SSLContext | bool,
    ) -> tuple[int, bytes]:
        """One long-poll: (HTTP status, body); status 0 for a connection that failed."""
        try:
            async with http.get(
                self._url,
                params={"timeoutSeconds": str(self._wait)},
                headers=headers,
                ssl=context,
            ) as response:
                return response.status, await response.read()
        except aiohttp.ClientConnectorCertificateError as exc:
            logger.warning("the relay's certificate is not trusted", extra={"error": str(exc)})
            return 0, b""
        except (aiohttp.ClientError, TimeoutError) as exc:
            logger.debug("assignment poll failed", extra={"error": type(exc).__name__})
            return 0, b""


async def _sleep_or_stop(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=seconds)
