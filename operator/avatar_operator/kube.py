"""The operator's Kubernetes API access: raw dicts in and out, errors translated once.

kopf watches and patches the AvatarSessions it handles; everything else (child objects,
status writes outside a handler, node and pod listings, the Lease) goes through here, on
`kubernetes_asyncio` so that nothing blocks the event loop. Responses are read as raw JSON
(`_preload_content=False`): the generated models cost more to build than the request itself,
and the rest of the operator works on plain dicts, like kopf does.

The calls made for every session (creating its Secret, Pod and Events, patching its status,
deleting its children) skip the generated per-endpoint wrappers and go straight to the client's
REST layer (`ApiClient.rest_client`, with the client's own authentication and connection pool):
the wrappers validate every keyword and walk the whole body to "sanitize" it, which for plain
dicts changes nothing and cost about as much client CPU as the HTTP request itself (measured
here: ~1.6 ms against ~0.9 ms per Pod create). Answers nobody reads (a created Pod, an Event)
are not parsed either. Reads, lists and Leases, which are rare, keep the generated wrappers.

Library errors become `KubeError` subclasses (`NotFound`, `Conflict`, `Forbidden`, `Invalid`)
that carry the API server's Status message, so callers never import the client's exceptions.
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
from collections.abc import Awaitable
from typing import Any
from urllib.parse import quote

import aiohttp
from kubernetes_asyncio import client, config
from kubernetes_asyncio.client.exceptions import ApiException

from avatar_sdk import api, pools
from avatar_sdk.objects import Obj

logger = logging.getLogger(__name__)


class KubeError(Exception):
    """An API call failed; `status` is the HTTP code, `reason` the Status reason."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(f"{status} {reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message


class NotFound(KubeError):
    pass


class Conflict(KubeError):
    """AlreadyExists on create, or a stale resourceVersion on update."""


class Forbidden(KubeError):
    pass


class Invalid(KubeError):
    pass


_ERRORS: dict[int, type[KubeError]] = {404: NotFound, 409: Conflict, 403: Forbidden, 422: Invalid}


def _error(code: int, reason: str, body: bytes | str | None) -> KubeError:
    """The API server's `Status` body, as one of our errors."""
    message = body.decode(errors="replace") if isinstance(body, bytes) else str(body or "")
    try:
        status = json.loads(body or b"")
        reason = status.get("reason", reason)
        message = status.get("message", message)
    except (TypeError, ValueError, AttributeError):
        pass
    return _ERRORS.get(code, KubeError)(code, reason, message)


async def _raw(call: Awaitable[Any]) -> Obj:
    try:
        response = await call
        body = await response.read()
    except ApiException as exc:
        raise _error(int(exc.status or 0), str(exc.reason or ""), exc.body) from exc
    # With `_preload_content=False` the client hands error responses back instead of raising:
    # without this check a 404 or a 409 would read as a successful answer.
    if not 200 <= response.status <= 299:
        raise _error(response.status, str(response.reason or ""), body)
    result: Obj = json.loads(body) if body else {}
    return result


# Where each child kind is served: (API path prefix, plural).
_PATHS: dict[str, tuple[str, str]] = {
    "Secret": ("/api/v1", "secrets"),
    "Pod": ("/api/v1", "pods"),
    "Event": ("/api/v1", "events"),
    "ServiceAccount": ("/api/v1", "serviceaccounts"),
    "Role": ("/apis/rbac.authorization.k8s.io/v1", "roles"),
    "RoleBinding": ("/apis/rbac.authorization.k8s.io/v1", "rolebindings"),
}
_SESSIONS = f"/apis/{api.GROUP}/{api.VERSION}"
JSON = "application/json"
MERGE_PATCH = "application/merge-patch+json"
BACKGROUND = {"propagationPolicy": "Background"}


def _collection(prefix: str, namespace: str, plural: str) -> str:
    return f"{prefix}/namespaces/{quote(namespace, safe='')}/{plural}"


async def load_api_client(kubeconfig: str | None = None) -> client.ApiClient:
    """In-cluster config when running in a Pod, else the kubeconfig (or `$KUBECONFIG`)."""
    if kubeconfig is None:
        try:
            config.load_incluster_config()  # type: ignore[no-untyped-call]  # untyped upstream
            return await _without_env_lookups(client.ApiClient())
        except config.ConfigException:
            pass
    # a client of its own, not the process-wide default: tests run several clusters at once
    api_client: client.ApiClient = await config.new_client_from_config(config_file=kubeconfig)
    return await _without_env_lookups(api_client)


async def _without_env_lookups(api_client: client.ApiClient) -> client.ApiClient:
    """kubernetes_asyncio opens its aiohttp session with `trust_env=True`: aiohttp then reads
    ~/.netrc and the proxy variables in a worker thread on *every* request — two thread hops
    per call, measured at about a quarter of the operator's CPU in a burst. The operator talks
    to the API server its configuration names (a kubeconfig proxy is applied by the client
    itself, per request), so the session is replaced by one on the same connector settings
    without those lookups."""
    rest = api_client.rest_client
    old: aiohttp.ClientSession = rest.pool_manager
    conf = api_client.configuration
    context = ssl.create_default_context(cafile=conf.ssl_ca_cert)
    if conf.cert_file:
        context.load_cert_chain(conf.cert_file, keyfile=conf.key_file)
    if not conf.verify_ssl:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    rest.pool_manager = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=conf.connection_pool_maxsize, ssl=context),
        trust_env=False,
        read_bufsize=2**21,  # as the client's own: watch events of large objects
    )
    await old.close()
    return api_client


RETRIES = 10  # as client-go's rest client (maxRetries)
RETRY_WAIT_CAP_SECONDS = 5.0


def _retry_wait(status: int, retry_after: str | None) -> float | None:
    """How long to wait before retrying, or None for an answer not to retry: a 429 always
    (1 s without Retry-After), a 5xx only when the server said Retry-After."""
    if retry_after is None:
        return 1.0 if status == 429 else None
    try:
        seconds = float(retry_after)
    except ValueError:
        return 1.0
    return min(max(seconds, 0.1), RETRY_WAIT_CAP_SECONDS)


class Kube:
    """The handful of API calls the operator makes, on one shared connection pool."""

    def __init__(self, api_client: client.ApiClient) -> None:
        self.api_client = api_client
        # Typed as Any: the generated stubs demand model objects where the API takes plain
        # dicts, and this class is the typed boundary for the rest of the operator.
        self.core: Any = client.CoreV1Api(api_client)
        self.rbac: Any = client.RbacAuthorizationV1Api(api_client)
        self.custom: Any = client.CustomObjectsApi(api_client)
        self.coordination: Any = client.CoordinationV1Api(api_client)

    async def aclose(self) -> None:
        await self.api_client.close()

    async def _request(
        self,
        method: str,
        path: str,
        *,
        body: Obj | None = None,
        query: dict[str, str] | None = None,
        content_type: str = JSON,
        answer: bool = True,
    ) -> Obj:
        """One request through the client's REST layer; the parsed answer, or {} if not
        `answer`. Raises a KubeError for an error Status.

        As client-go does, a 429 (and a 5xx that carries Retry-After) is retried after the
        wait the server asks for, up to `RETRIES` times: kube-apiserver answers 429 "storage is
        (re)initializing" for a resource whose CRD was just Established, and under priority and
        fairness when a flow's queue is full."""
        api_client = self.api_client
        headers = {**api_client.default_headers, "Accept": JSON, "Content-Type": content_type}
        await api_client.update_params_for_auth(headers, [], ["BearerToken"])
        for attempt in range(RETRIES + 1):
            retry_after: str | None = None
            try:
                response = await api_client.rest_client.request(
                    method,
                    f"{api_client.configuration.host}{path}",
                    query_params=query,
                    headers=headers,
                    body=body,
                    _preload_content=False,
                )
                raw = await response.read()
                status, reason = response.status, str(response.reason or "")
                if status == 429 or status >= 500:
                    retry_after = response.headers.get("Retry-After")
            except ApiException as exc:
                status, reason, raw = int(exc.status or 0), str(exc.reason or ""), exc.body
                if status == 429 or status >= 500:
                    exc_headers: Any = exc.headers or {}
                    retry_after = exc_headers.get("Retry-After")
            if 200 <= status <= 299:
                break
            wait = _retry_wait(status, retry_after)
            if wait is None or attempt == RETRIES:
                raise _error(status, reason, raw)
            logger.info(
                "API server asked to retry",
                extra={"status": status, "path": path, "after_seconds": wait},
            )
            await asyncio.sleep(wait)
        if not answer or not raw:
            return {}
        result: Obj = json.loads(raw)
        return result

    # --- generic create/delete for the child kinds ---------------------------------------

    async def create(self, obj: Obj, *, answer: bool = True) -> Obj:
        """Create a namespaced child; raises Conflict if it already exists.

        Returns the created object, or {} with `answer=False` (the answer is not parsed).
        """
        prefix, plural = _PATHS[obj["kind"]]
        path = _collection(prefix, obj["metadata"]["namespace"], plural)
        return await self._request("POST", path, body=obj, answer=answer)

    async def ensure(self, obj: Obj) -> bool:
        """Create unless it exists already (a restart replays creates); True if created."""
        try:
            await self.create(obj, answer=False)
        except Conflict:
            return False
        return True

    async def delete(self, kind: str, namespace: str, name: str) -> bool:
        """Delete in the background (children cascade); False if it was already gone."""
        prefix, plural = _PATHS[kind]
        path = f"{_collection(prefix, namespace, plural)}/{quote(name, safe='')}"
        try:
            await self._request("DELETE", path, query=BACKGROUND, answer=False)
        except NotFound:
            return False
        return True

    # --- reads ------------------------------------------------------------------------------

    async def read_secret(self, namespace: str, name: str) -> Obj:
        return await _raw(self.core.read_namespaced_secret(name, namespace, _preload_content=False))

    async def read_pod(self, namespace: str, name: str) -> Obj:
        return await _raw(self.core.read_namespaced_pod(name, namespace, _preload_content=False))

    async def list_nodes(self) -> list[Obj]:
        items: list[Obj] = (await _raw(self.core.list_node(_preload_content=False)))["items"]
        return items

    async def _list(
        self, prefix: str, plural: str, namespace: str | None, label_selector: str | None
    ) -> list[Obj]:
        """A namespace's objects, or every namespace's with `namespace` None."""
        path = _collection(prefix, namespace, plural) if namespace else f"{prefix}/{plural}"
        query = {"labelSelector": label_selector} if label_selector else None
        items: list[Obj] = (await self._request("GET", path, query=query))["items"]
        return items

    async def list_pods(self, label_selector: str, namespace: str | None = None) -> list[Obj]:
        return await self._list(*_PATHS["Pod"], namespace, label_selector)

    async def list_secrets(self, label_selector: str, namespace: str | None = None) -> list[Obj]:
        return await self._list(*_PATHS["Secret"], namespace, label_selector)

    async def patch(self, kind: str, namespace: str, name: str, patch: Obj) -> Obj:
        """A JSON merge patch of a child (a `metadata.resourceVersion` in it is a
        precondition: Conflict when the object changed since); the patched object."""
        prefix, plural = _PATHS[kind]
        path = f"{_collection(prefix, namespace, plural)}/{quote(name, safe='')}"
        return await self._request("PATCH", path, body=patch, content_type=MERGE_PATCH)

    # --- AvatarPools ------------------------------------------------------------------------

    async def list_pools(self, namespace: str | None = None) -> list[Obj]:
        """The AvatarPools; none (logged) where their CRD is not installed."""
        try:
            return await self._list(_SESSIONS, pools.POOL_PLURAL, namespace, None)
        except NotFound:
            logger.warning(
                "the AvatarPool CRD is not installed (crds/avatarpools.yaml): warm pools are off"
            )
            return []

    async def patch_pool_status(self, namespace: str, name: str, status: Obj) -> Obj:
        """A JSON merge patch of a pool's `status`; the updated pool."""
        path = f"{_collection(_SESSIONS, namespace, pools.POOL_PLURAL)}/{quote(name, safe='')}"
        return await self._request(
            "PATCH", f"{path}/status", body={"status": status}, content_type=MERGE_PATCH
        )

    # --- AvatarSessions ---------------------------------------------------------------------

    async def list_sessions(
        self, namespace: str | None = None, label_selector: str | None = None
    ) -> list[Obj]:
        return await self._list(_SESSIONS, api.PLURAL, namespace, label_selector)

    async def get_session(self, namespace: str, name: str) -> Obj:
        return await _raw(
            self.custom.get_namespaced_custom_object(
                api.GROUP, api.VERSION, namespace, api.PLURAL, name, _preload_content=False
            )
        )

    async def create_session(self, body: Obj) -> Obj:
        """Create an AvatarSession; raises Conflict if one of that name exists."""
        path = _collection(_SESSIONS, body["metadata"]["namespace"], api.PLURAL)
        return await self._request("POST", path, body=body)

    async def replace(self, obj: Obj) -> Obj:
        """Replace a namespaced child (PUT): for one left behind by an earlier owner."""
        prefix, plural = _PATHS[obj["kind"]]
        meta = obj["metadata"]
        path = f"{_collection(prefix, meta['namespace'], plural)}/{quote(meta['name'], safe='')}"
        return await self._request("PUT", path, body=obj)

    async def patch_session_status(self, namespace: str, name: str, status: Obj) -> Obj:
        """A JSON merge patch of `status` (None values delete keys); the updated session."""
        path = f"{_collection(_SESSIONS, namespace, api.PLURAL)}/{quote(name, safe='')}/status"
        return await self._request("PATCH", path, body={"status": status}, content_type=MERGE_PATCH)

    async def delete_session(self, namespace: str, name: str) -> bool:
        path = f"{_collection(_SESSIONS, namespace, api.PLURAL)}/{quote(name, safe='')}"
        try:
            await self._request("DELETE", path, query=BACKGROUND, answer=False)
        except NotFound:
            return False
        return True

    # --- Leases -----------------------------------------------------------------------------

    async def read_lease(self, namespace: str, name: str) -> Obj:
        return await _raw(
            self.coordination.read_namespaced_lease(name, namespace, _preload_content=False)
        )

    async def create_lease(self, namespace: str, body: Obj) -> Obj:
        return await _raw(
            self.coordination.create_namespaced_lease(namespace, body, _preload_content=False)
        )

    async def replace_lease(self, namespace: str, name: str, body: Obj) -> Obj:
        """Replace with the resourceVersion in `body`: Conflict if someone else wrote first."""
        return await _raw(
            self.coordination.replace_namespaced_lease(
                name, namespace, body, _preload_content=False
            )
        )
