"""A small synchronous Kubernetes REST client for tests and benches: one TLS connection per
call, JSON in and out, an error that quotes the server's Status.

Tests drive the real API server with it where kubectl would cost a process per call (a poll
every 50 ms) and where an asyncio client would need the test's own loop. It knows the paths of
the kinds the project's tests touch; anything else is a path.
"""

from __future__ import annotations

import http.client
import json
import ssl
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

from avatar_sdk import api, pools

MERGE_PATCH = "application/merge-patch+json"

# plural → (API prefix, namespaced)
KINDS: dict[str, tuple[str, bool]] = {
    "pods": ("/api/v1", True),
    "secrets": ("/api/v1", True),
    "configmaps": ("/api/v1", True),
    "events": ("/api/v1", True),
    "services": ("/api/v1", True),
    "serviceaccounts": ("/api/v1", True),
    "namespaces": ("/api/v1", False),
    "nodes": ("/api/v1", False),
    "leases": ("/apis/coordination.k8s.io/v1", True),
    api.PLURAL: (f"/apis/{api.GROUP}/{api.VERSION}", True),
    pools.POOL_PLURAL: (f"/apis/{api.GROUP}/{api.VERSION}", True),
}


RETRY_AFTER_MAX_S = 2.0  # a longer Retry-After is waited in steps of this


class RestError(RuntimeError):
    """The server answered with an error: `status` and its Status object (or text)."""

    def __init__(self, method: str, path: str, status: int, body: Any) -> None:
        message = body.get("message") if isinstance(body, dict) else body
        super().__init__(f"{method} {path}: {status} {message}")
        self.status = status
        self.body = body


class RestClient:
    """`server` with a client certificate (`cert`, `key`) or a bearer `token`."""

    def __init__(
        self,
        server: str,
        ca_file: str | Path,
        *,
        cert: tuple[str | Path, str | Path] | None = None,
        token: str | None = None,
        timeout: float = 30.0,
    ) -> None:
        parts = urlsplit(server)
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 443
        self.timeout = timeout
        self._ssl = ssl.create_default_context(cafile=str(ca_file))
        if cert is not None:
            self._ssl.load_cert_chain(str(cert[0]), str(cert[1]))
        self._token = token

    # --- raw ------------------------------------------------------------------------------

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        params: dict[str, str] | None = None,
        content_type: str = "application/json",
        ok: tuple[int, ...] = (200, 201, 202),
    ) -> Any:
        headers = {"Accept": "application/json"}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = content_type
        if self._token:
            headers["Authorization"] = f"Bearer {self._token}"
        target = path + ("?" + urlencode(params) if params else "")
        deadline = time.monotonic() + self.timeout
        while True:
            connection = http.client.HTTPSConnection(
                self.host, self.port, context=self._ssl, timeout=self.timeout
            )
            try:
                connection.request(method, target, body=data, headers=headers)
                response = connection.getresponse()
                text = response.read().decode()
            finally:
                connection.close()
            try:
                decoded: Any = json.loads(text) if text else None
            except ValueError:
                decoded = text
            if response.status in ok:
                return decoded
            wait = _retry_after(response, decoded) if response.status == 429 else None
            if wait is None or time.monotonic() + wait > deadline:
                raise RestError(method, path, response.status, decoded)
            # 429 with Retry-After: the API server asks to come back (a CRD's storage still
            # initializing, priority and fairness); as client-go does, within the timeout
            time.sleep(wait)

    # --- by kind --------------------------------------------------------------------------

    @staticmethod
    def path(plural: str, namespace: str | None = None, name: str | None = None) -> str:
        prefix, namespaced = KINDS[plural]
        where = f"/namespaces/{namespace}" if namespaced and namespace else ""
        return f"{prefix}{where}/{plural}" + (f"/{quote(name)}" if name else "")

    def get(self, plural: str, name: str, namespace: str | None = None) -> dict[str, Any] | None:
        try:
            found: dict[str, Any] = self.request("GET", self.path(plural, namespace, name))
        except RestError as error:
            if error.status == 404:
                return None
            raise
        return found

    def list(
        self, plural: str, namespace: str | None = None, **params: str
    ) -> list[dict[str, Any]]:
        listing = self.request("GET", self.path(plural, namespace), params=params or None)
        items: list[dict[str, Any]] = listing.get("items") or []
        return items

    def create(self, obj: dict[str, Any]) -> dict[str, Any]:
        plural = plural_of(obj)
        namespace = obj.get("metadata", {}).get("namespace")
        created: dict[str, Any] = self.request("POST", self.path(plural, namespace), obj)
        return created

    def patch(
        self,
        plural: str,
        name: str,
        patch: dict[str, Any],
        namespace: str | None = None,
        *,
        subresource: str = "",
    ) -> dict[str, Any]:
        path = self.path(plural, namespace, name) + (f"/{subresource}" if subresource else "")
        patched: dict[str, Any] = self.request("PATCH", path, patch, content_type=MERGE_PATCH)
        return patched

    def delete(
        self,
        plural: str,
        name: str,
        namespace: str | None = None,
        *,
        grace_seconds: int | None = None,
        propagation: str | None = None,
    ) -> bool:
        """False when it was already gone."""
        options: dict[str, Any] = {"apiVersion": "v1", "kind": "DeleteOptions"}
        if grace_seconds is not None:
            options["gracePeriodSeconds"] = grace_seconds
        if propagation is not None:
            options["propagationPolicy"] = propagation
        try:
            self.request("DELETE", self.path(plural, namespace, name), options)
        except RestError as error:
            if error.status == 404:
                return False
            raise
        return True

    def wait_for(
        self,
        plural: str,
        name: str,
        namespace: str | None = None,
        predicate: Callable[[dict[str, Any]], bool] = lambda _: True,
        *,
        within: float = 30.0,
        every: float = 0.05,
    ) -> dict[str, Any]:
        deadline = time.monotonic() + within
        while True:
            found = self.get(plural, name, namespace)
            if found is not None and predicate(found):
                return found
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"{plural} {namespace}/{name}: not as expected within {within} s; last: "
                    + json.dumps((found or {}).get("status"))[:500]
                )
            time.sleep(every)


_PLURALS = {
    "Pod": "pods",
    "Secret": "secrets",
    "ConfigMap": "configmaps",
    "Event": "events",
    "Service": "services",
    "ServiceAccount": "serviceaccounts",
    "Namespace": "namespaces",
    "Node": "nodes",
    "Lease": "leases",
    api.KIND: api.PLURAL,
    pools.POOL_KIND: pools.POOL_PLURAL,
}


def plural_of(obj: dict[str, Any]) -> str:
    kind = obj.get("kind", "")
    if kind not in _PLURALS:
        raise ValueError(f"kind {kind!r} is not one this client knows")
    return _PLURALS[kind]


def _retry_after(response: http.client.HTTPResponse, status: Any) -> float:
    """The seconds a 429 asks to wait: its Retry-After header, else its Status's
    details.retryAfterSeconds, else 1; at most RETRY_AFTER_MAX_S."""
    details = status.get("details") if isinstance(status, dict) else None
    given = response.getheader("Retry-After") or (details or {}).get("retryAfterSeconds")
    try:
        return min(float(given or 1.0), RETRY_AFTER_MAX_S)
    except (TypeError, ValueError):
        return 1.0
