"""The Kubernetes API over HTTP on loopback: aiohttp in front of `store.Store`.

One catch-all route parses the path itself (`/api/v1/namespaces/{ns}/{plural}/{name}/{sub}`,
`/apis/{group}/{version}/...`, the legacy `/watch/` prefix), because the resources served change
at run time when CRDs come and go. Requests are answered from the store synchronously; only
watches are long-lived.

Watches stream as kube-apiserver streams them: HTTP 200, chunked, one JSON event per line
(`{"type": "ADDED"|"MODIFIED"|"DELETED"|"BOOKMARK"|"ERROR", "object": ...}`); events that
arrive within `watch_flush_seconds` of a write share the next chunk. A watch honours
`resourceVersion` (replay from the store's event log, or the current state as ADDED events when
unset or "0"), `labelSelector`/`fieldSelector`, `timeoutSeconds` (else 30-60 min, as the real
server picks), `allowWatchBookmarks` (a BOOKMARK every `bookmark_interval` seconds while idle),
and `sendInitialEvents=true` (the initial-events-end bookmark). A resourceVersion older than
the event log is answered as the real server does: HTTP 200, then one ERROR event carrying a
410 `Status`, then the end of the stream.

Lists always answer the latest state (a `resourceVersion` or `resourceVersionMatch` on a list
is not honoured: there is no history of objects, only of events); `limit`/`continue` page
through it in key order, each page carrying the first page's resourceVersion.

What kubectl needs besides: aggregated discovery when asked for it (`resources`), OpenAPI v3
documents (`openapi`), `meta.k8s.io` Tables for gets, lists and watches that ask for one
(`Accept: application/json;as=Table;...`, see `tables`), `fieldValidation` for every kind
(`fieldcheck` for built-in kinds), protobuf bodies of kubectl's typed `create` commands
(`protobuf`), server-side apply approximated (`_apply`: create, or merge in; no field
ownership), the `scale` subresource of custom resources (an autoscaling/v1 Scale, see
`scales`), and answers to `kubectl auth can-i` / `whoami` (`_review`).

Refusals are `Status` objects (see `errors`). Deliberately not served, with the answer given:
apply and bodies as CBOR (415), strategic merge patch of custom resources (415, as on a real
cluster), protobuf bodies of other kinds (415; JSON is always answered), OpenAPI v2 (406:
kubectl then reads v3), authentication and authorization (every request is allowed).

Test hooks: `drop_watches()` aborts open watch connections (a network failure, not a clean
end), `wait_for_watches()` waits until a client's watches are open, and control endpoints
(`POST /localcluster/v1/{name}`, see `add_control`) let a test or another process drive the
simulated kubelet.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import socket
from collections.abc import Awaitable, Callable
from typing import Any

import yaml
from aiohttp import web

from avatar_devtools.localcluster import (
    errors,
    fieldcheck,
    openapi,
    protobuf,
    resources,
    scales,
    selectors,
    store,
    tables,
    watching,
)

logger = logging.getLogger(__name__)

JSON = "application/json"
APPLY_PATCHES = ("application/apply-patch+yaml", "application/apply-patch+cbor")
NAMESPACE_SUBRESOURCES = frozenset({"status", "finalize"})

ControlHandler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]
LogReader = Callable[[str, str, str | None], str | None]


class OpenWatch:
    """An open watch connection, as tests see it."""

    def __init__(
        self,
        resource: str,
        namespace: str | None,
        request: web.BaseRequest,
        watcher: watching.Watcher,
    ) -> None:
        self.resource = resource
        self.namespace = namespace
        self.request = request
        self.watcher = watcher


def _json_response(body: bytes, status: int = 200) -> web.Response:
    return web.Response(body=body, status=status, content_type=JSON)


def _error_response(error: errors.ApiError) -> web.Response:
    return _json_response(error.to_json(), status=error.code)


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def _flag(value: str | None) -> bool:
    return value is not None and value.lower() in ("true", "1")


def _int_param(params: Any, name: str) -> int | None:
    value = params.get(name)
    if value in (None, ""):
        return None
    try:
        return int(value)
    except ValueError:
        raise errors.bad_request(f"invalid {name}: {value!r}") from None


class ApiServer:
    """Serve a `Store` over HTTP on 127.0.0.1."""

    def __init__(
        self,
        the_store: store.Store,
        *,
        port: int = 0,
        bookmark_interval: float = 10.0,
        default_watch_seconds: tuple[float, float] = (1800.0, 3600.0),
        watch_flush_seconds: float = 0.01,
    ) -> None:
        self.store = the_store
        self.bookmark_interval = bookmark_interval
        # After a write to a watch, wait this long before the next one, so that a burst of
        # events leaves in one chunk instead of one socket write (and task wake-up) per event
        # per watcher. The first event after a quiet spell is written at once.
        self.watch_flush_seconds = watch_flush_seconds
        self.default_watch_seconds = default_watch_seconds
        self.log_reader: LogReader | None = None
        self.openapi = openapi.OpenApi(the_store.resources)
        self._port = port
        self._controls: dict[str, ControlHandler] = {}
        self._runner: web.ServerRunner | None = None
        self._socket: socket.socket | None = None
        self._open: set[OpenWatch] = set()
        self._watch_waiters: list[asyncio.Future[None]] = []
        self._gc_scheduled = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self.requests = 0
        # (method, path with its query) of every request, for benchmarks that count what a
        # client wrote and tests that check which calls a client made (RBAC)
        self.on_request: Callable[[str, str], None] | None = None
        self.add_control("watches", self._control_watches)
        self.add_control("drop-watches", self._control_drop_watches)
        self.add_control("compact", self._control_compact)

    # --- lifecycle ------------------------------------------------------------------------

    @property
    def port(self) -> int:
        if self._socket is None:
            raise RuntimeError("the server is not started")
        return int(self._socket.getsockname()[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self.store.on_dirty = self._schedule_gc
        # The low-level server: the path is parsed here, so aiohttp's router would only add cost.
        server = web.Server(self._handle, handler_cancellation=True, access_log=None)
        self._runner = web.ServerRunner(
            server, handler_cancellation=True, access_log=None, shutdown_timeout=1.0
        )
        await self._runner.setup()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", self._port))
        self._socket = sock
        site = web.SockSite(self._runner, sock, backlog=1024)
        await site.start()
        logger.info("api server listening", extra={"url": self.url})

    async def stop(self) -> None:
        for open_watch in list(self._open):
            open_watch.watcher.close("the server is shutting down")
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._socket is not None:
            self._socket.close()
        if self.store.on_dirty == self._schedule_gc:
            self.store.on_dirty = None
        logger.info("api server stopped")

    def _schedule_gc(self) -> None:
        if not self._gc_scheduled and self._loop is not None:
            self._gc_scheduled = True
            self._loop.call_soon(self._run_gc)

    def _run_gc(self) -> None:
        self._gc_scheduled = False
        try:
            self.store.collect_garbage()
        except Exception:
            logger.exception("garbage collection failed")

    def add_control(self, name: str, handler: ControlHandler) -> None:
        """Serve `POST /localcluster/v1/{name}`: a JSON body in, a JSON object out."""
        self._controls[name] = handler

    # --- test hooks -----------------------------------------------------------------------

    async def _control_watches(self, body: dict[str, Any]) -> dict[str, Any]:
        return {
            "watches": [
                {"resource": w.resource, "namespace": w.namespace} for w in self.open_watches()
            ]
        }

    async def _control_drop_watches(self, body: dict[str, Any]) -> dict[str, Any]:
        return {"dropped": self.drop_watches(body.get("resource"))}

    async def _control_compact(self, body: dict[str, Any]) -> dict[str, Any]:
        self.store.compact()
        return {"resourceVersion": str(self.store.rv)}

    def open_watches(self) -> list[OpenWatch]:
        return list(self._open)

    def drop_watches(self, resource: str | None = None) -> int:
        """Abort open watch connections (all, or one resource's), as a network failure would."""
        dropped = 0
        for open_watch in list(self._open):
            if resource is not None and open_watch.resource != resource:
                continue
            transport = open_watch.request.transport
            if transport is not None:
                transport.abort()
            open_watch.watcher.close("dropped by the test")
            dropped += 1
        return dropped

    async def wait_for_watches(
        self,
        resource: str,
        *,
        count: int = 1,
        namespace: str | None = None,
        within: float = 10.0,
    ) -> None:
        """Wait until `count` watches of `resource` (e.g. `pods`, `x.example.com`) are open."""

        def enough() -> bool:
            found = [
                w
                for w in self._open
                if w.resource == resource and (namespace is None or w.namespace == namespace)
            ]
            return len(found) >= count

        async with asyncio.timeout(within):
            while not enough():
                waiter = asyncio.get_running_loop().create_future()
                self._watch_waiters.append(waiter)
                await waiter

    def _watch_set_changed(self) -> None:
        waiters, self._watch_waiters = self._watch_waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    # --- dispatch -------------------------------------------------------------------------

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        self.requests += 1
        if self.on_request is not None:
            self.on_request(request.method, request.path_qs)
        try:
            return await self._dispatch(request)
        except errors.ApiError as e:
            return _error_response(e)
        except json.JSONDecodeError as e:
            return _error_response(errors.bad_request(f"the body is not valid JSON: {e}"))
        except (ConnectionResetError, asyncio.CancelledError):
            raise
        except Exception as e:
            logger.exception("request failed", extra={"path": request.path})
            return _error_response(errors.internal(repr(e)))

    async def _dispatch(self, request: web.BaseRequest) -> web.StreamResponse:
        parts = [p for p in request.path.split("/") if p]
        if not parts:
            return _json_response(_dumps({"paths": ["/api", "/apis", "/version", "/healthz"]}))
        head = parts[0]
        if head in ("healthz", "livez", "readyz"):
            return web.Response(text="ok")
        if head == "version":
            return _json_response(_dumps(self._version()))
        if head == "localcluster":
            return await self._control(request, parts)
        if head == "openapi":
            return self._openapi(request, parts)
        if head in ("api", "apis") and len(parts) == 1 and _wants_aggregated(request):
            document = self.store.resources.aggregated(core=head == "api")
            headers = {"Content-Type": AGGREGATED_MEDIA}
            return web.Response(body=_dumps(document), headers=headers)
        if head == "api":
            if len(parts) == 1:
                return _json_response(_dumps(self.store.resources.api_versions()))
            group, version, rest = "", parts[1], parts[2:]
        elif head == "apis":
            if len(parts) == 1:
                return _json_response(_dumps(self.store.resources.api_group_list()))
            if len(parts) == 2:
                doc = self.store.resources.api_group(parts[1])
                if doc is None:
                    raise errors.no_such_path()
                return _json_response(_dumps(doc))
            group, version, rest = parts[1], parts[2], parts[3:]
        else:
            raise errors.no_such_path()
        if not rest:
            doc = self.store.resources.resource_list(group, version)
            if doc is None:
                raise errors.no_such_path()
            return _json_response(_dumps(doc))
        response = await self._resource(request, group, version, rest)
        if not group and version == "v1" and _plural(rest) == "endpoints" and not response.prepared:
            # kube-apiserver 1.33+ warns on every request for v1 Endpoints
            response.headers.add("Warning", f"299 - {json.dumps(ENDPOINTS_DEPRECATED)}")
        return response

    def _version(self) -> dict[str, str]:
        major, minor = resources.KUBE_VERSION["major"], resources.KUBE_VERSION["minor"]
        return {
            "major": major,
            "minor": minor,
            "gitVersion": f"v{major}.{minor}.0-localcluster",
            "gitCommit": "localcluster",
            "gitTreeState": "clean",
            "buildDate": "2026-01-01T00:00:00Z",
            "goVersion": "python",
            "compiler": "cpython",
            "platform": "linux/amd64",
        }

    def _openapi(self, request: web.BaseRequest, parts: list[str]) -> web.Response:
        """`/openapi/v3` and its documents (see `openapi`); v2 is not served: 406, as a real
        server answers an Accept it cannot produce, so that kubectl turns to v3."""
        if request.method != "GET":
            raise errors.method_not_allowed()
        if parts[1:2] == ["v2"] and len(parts) == 2:
            raise errors.ApiError(
                406,
                "NotAcceptable",
                "only OpenAPI v3 is served by localcluster (/openapi/v3)",
            )
        if parts[1:2] != ["v3"]:
            raise errors.no_such_path()
        documents = self.openapi.documents()
        if len(parts) == 2:
            return _json_response(documents.discovery())
        key = "/".join(parts[2:])
        body = documents.bodies.get(key)
        if body is None:
            raise errors.no_such_path()
        digest = documents.hashes[key]
        response = _json_response(body)
        response.headers["Etag"] = f'"{digest}"'
        if request.query.get("hash") == digest:
            response.headers["Cache-Control"] = "public, immutable"
            response.headers["Expires"] = "Thu, 01 Jan 2099 00:00:00 GMT"
        else:
            response.headers["Cache-Control"] = "no-cache, private"
        return response

    async def _control(self, request: web.BaseRequest, parts: list[str]) -> web.Response:
        if len(parts) != 3 or parts[1] != "v1" or request.method != "POST":
            raise errors.no_such_path()
        handler = self._controls.get(parts[2])
        if handler is None:
            raise errors.no_such_path()
        body = await _read_body(request)
        payload = json.loads(body) if body else {}
        if not isinstance(payload, dict):
            raise errors.bad_request("a control request takes a JSON object")
        return _json_response(_dumps(await handler(payload)))

    async def _resource(
        self, request: web.BaseRequest, group: str, version: str, rest: list[str]
    ) -> web.StreamResponse:
        params = request.query
        watch_requested = _flag(params.get("watch"))
        if rest[0] == "watch":
            watch_requested, rest = True, rest[1:]
        namespace: str | None = None
        if len(rest) >= 3 and rest[0] == "namespaces" and rest[2] not in NAMESPACE_SUBRESOURCES:
            namespace, rest = rest[1], rest[2:]
        if not rest or len(rest) > 3:
            raise errors.no_such_path()
        info = self.store.lookup(group, version, rest[0])
        if group in resources.REVIEW_GROUPS:
            return await self._review(request, info, namespace, rest)
        name = rest[1] if len(rest) > 1 else None
        subresource = rest[2] if len(rest) > 2 else None
        if namespace is not None and not info.namespaced:
            raise errors.no_such_path()
        if subresource is not None and subresource not in info.subresources:
            raise errors.no_such_path()
        method = request.method
        dry_run = params.get("dryRun") == "All"

        if name is None:
            if method == "GET":
                labels = selectors.parse_labels(params.get("labelSelector"))
                fields = selectors.parse_fields(params.get("fieldSelector"), info.field_labels)
                if watch_requested:
                    return await self._watch(request, info, namespace, labels, fields)
                return self._list(info, namespace, labels, fields, params, request)
            if method == "POST":
                if info.namespaced and namespace is None:
                    raise errors.method_not_allowed()
                body = await self._json_body(request)
                warnings: list[str] = []
                self._check_fields(info, body, params, warnings)
                record = self.store.create(info, namespace, body, dry_run=dry_run)
                return _warned(
                    _json_response(record.projected(info.api_version), status=201), warnings
                )
            if method == "DELETE":
                labels = selectors.parse_labels(params.get("labelSelector"))
                fields = selectors.parse_fields(params.get("fieldSelector"), info.field_labels)
                options = await self._delete_options(request)
                deleted = self.store.delete_collection(
                    info,
                    namespace,
                    labels=labels,
                    fields=fields,
                    propagation=options.get("propagationPolicy"),
                    grace_period=options.get("gracePeriodSeconds"),
                    dry_run=dry_run,
                )
                return _json_response(self._list_body(info, deleted, self.store.rv, None))
            raise errors.method_not_allowed()

        if info.namespaced and namespace is None:
            raise errors.no_such_path()
        if method == "GET":
            if subresource == "log":
                return self._log(info, namespace or "", name, params)
            if subresource == "scale":
                return self._scale_response(info, self.store.scale(info, namespace, name), request)
            record = self.store.get(info, namespace, name)
            accept = request.headers.get("Accept")
            if tables.wants_table(accept):
                return self._table(info, [record], str(record.rv), None, params, accept)
            return _json_response(record.projected(info.api_version))
        if method == "PUT" and subresource == "scale":
            body = await self._json_body(request)
            warnings = []
            self._check_scale_fields(body, params, warnings)
            scale = self.store.update_scale(info, namespace, name, body, dry_run=dry_run)
            return _warned(self._scale_response(info, scale, request), warnings)
        if method == "PUT":
            body = await self._json_body(request)
            warnings = []
            self._check_fields(info, body, params, warnings)
            record = self.store.update(
                info, namespace, name, body, subresource=subresource, dry_run=dry_run
            )
            return _warned(_json_response(record.projected(info.api_version)), warnings)
        if method == "PATCH":
            return await self._patch(request, info, namespace, name, subresource, dry_run)
        if method == "DELETE" and subresource is None:
            options = await self._delete_options(request)
            record = self.store.delete(
                info,
                namespace,
                name,
                propagation=options.get("propagationPolicy"),
                grace_period=options.get("gracePeriodSeconds"),
                preconditions=options.get("preconditions"),
                dry_run=dry_run,
            )
            return _json_response(record.projected(info.api_version))
        if method == "POST" and subresource == "binding":
            body = await self._json_body(request)
            target = (body.get("target") or {}).get("name") if isinstance(body, dict) else None
            if not target:
                raise errors.invalid("Binding", "", name, [errors.required("target.name")])
            self.store.bind(namespace or "", name, str(target))
            success = {
                "kind": "Status",
                "apiVersion": "v1",
                "metadata": {},
                "status": "Success",
                "code": 201,
            }
            return _json_response(_dumps(success), status=201)
        raise errors.method_not_allowed()

    async def _review(
        self,
        request: web.BaseRequest,
        info: resources.ResourceInfo,
        namespace: str | None,
        rest: list[str],
    ) -> web.Response:
        """`kubectl auth can-i` and `kubectl auth whoami`: every request is allowed here, and
        every caller is the cluster's admin. The body (protobuf from kubectl) is not read: the
        answer does not depend on it."""
        if request.method != "POST" or len(rest) != 1:
            raise errors.method_not_allowed()
        await _read_body(request)
        meta: dict[str, Any] = {"creationTimestamp": None}
        if namespace is not None:
            meta["namespace"] = namespace
        status: dict[str, Any]
        if info.kind == "SelfSubjectReview":
            groups = ["system:masters", "system:authenticated"]
            status = {"userInfo": {"username": "localcluster", "groups": groups}}
        elif info.kind == "SelfSubjectRulesReview":
            everything = {"verbs": ["*"], "apiGroups": ["*"], "resources": ["*"]}
            status = {
                "resourceRules": [everything],
                "nonResourceRules": [{"verbs": ["*"], "nonResourceURLs": ["*"]}],
                "incomplete": False,
            }
        else:
            status = {"allowed": True, "reason": "localcluster allows every request"}
        body = {
            "kind": info.kind,
            "apiVersion": info.api_version,
            "metadata": meta,
            "spec": {},
            "status": status,
        }
        return _json_response(_dumps(body), status=201)

    def _check_fields(
        self, info: resources.ResourceInfo, body: Any, params: Any, warnings: list[str]
    ) -> None:
        """`fieldValidation` as kube-apiserver does it: Strict refuses fields the kind does not
        have (400), Warn (the default) drops them with a `Warning` header, Ignore drops them
        silently. A custom resource's are those its CRD's schema does not declare (dropped when
        the schema prunes it), a built-in kind's those of kube-apiserver's schema of the kind
        (see `fieldcheck`)."""
        mode = params.get("fieldValidation") or "Warn"
        if mode not in FIELD_VALIDATION:
            raise errors.bad_request(
                f"fieldValidation {mode!r} is not one of {', '.join(FIELD_VALIDATION)}"
            )
        if not isinstance(body, dict):
            return
        if info.schema is not None:
            if mode == "Ignore":
                return
            unknown = info.schema.unknown_fields(body)
        else:
            prune = mode != "Strict"
            unknown = fieldcheck.unknown_fields(
                info.group, info.version, info.kind, body, prune=prune
            )
            if mode == "Ignore":
                return
        if unknown and mode == "Strict":
            raise errors.bad_request(
                f'{info.kind} in version "{info.version}" cannot be handled as a {info.kind}: '
                "strict decoding error: " + ", ".join(f'unknown field "{path}"' for path in unknown)
            )
        warnings.extend(f'unknown field "{path}"' for path in unknown)

    def _check_scale_fields(self, body: Any, params: Any, warnings: list[str]) -> None:
        """`fieldValidation` of an autoscaling/v1 Scale body put (see `_check_fields`; a
        patch's is `Store.patch_scale`'s)."""
        mode = _field_validation(params)
        unknown = [] if mode == "Ignore" else scales.unknown_fields(body)
        if unknown and mode == "Strict":
            raise errors.bad_request(
                'Scale in version "v1" cannot be handled as a Scale: strict decoding error: '
                + ", ".join(f'unknown field "{path}"' for path in unknown)
            )
        warnings.extend(f'unknown field "{path}"' for path in unknown)

    def _scale_response(
        self, info: resources.ResourceInfo, scale: dict[str, Any], request: web.BaseRequest
    ) -> web.Response:
        """A Scale, or as a Table when asked (with the custom resource's columns, the table
        convertor the scale subresource of a CRD inherits)."""
        accept = request.headers.get("Accept")
        if tables.wants_table(accept):
            include = tables.check_include(request.query.get("includeObject"))
            body = tables.table(
                info.printer,
                [scale],
                resource_version=str(scale["metadata"].get("resourceVersion", "")),
                continue_token=None,
                include=include,
                version=tables.table_version(accept or ""),
            )
            return _json_response(_dumps(body))
        return _json_response(_dumps(scale))

    async def _json_body(self, request: web.BaseRequest) -> Any:
        body = await _read_body(request)
        if not body:
            raise errors.bad_request("the request has no body")
        content_type = request.content_type
        if content_type and "yaml" in content_type:
            raise errors.unsupported_media_type(content_type, [JSON])
        if content_type == protobuf.MEDIA_TYPE:
            # kubectl's typed commands (`create namespace`, `create secret`) send protobuf
            return protobuf.decode(body)
        if content_type == "application/cbor":
            raise errors.unsupported_media_type(content_type, [JSON])
        return json.loads(body)

    async def _delete_options(self, request: web.BaseRequest) -> dict[str, Any]:
        options: dict[str, Any] = {}
        body = await _read_body(request)
        if body:
            parsed = json.loads(body)
            if isinstance(parsed, dict):
                options.update(parsed)
        params = request.query
        if params.get("propagationPolicy"):
            options["propagationPolicy"] = params["propagationPolicy"]
        grace = _int_param(params, "gracePeriodSeconds")
        if grace is not None:
            options["gracePeriodSeconds"] = grace
        orphan = options.pop("orphanDependents", None)
        if orphan is None and params.get("orphanDependents") is not None:
            orphan = _flag(params.get("orphanDependents"))
        if orphan is not None and "propagationPolicy" not in options:
            options["propagationPolicy"] = "Orphan" if orphan else "Background"
        return options

    async def _patch(
        self,
        request: web.BaseRequest,
        info: resources.ResourceInfo,
        namespace: str | None,
        name: str,
        subresource: str | None,
        dry_run: bool,
    ) -> web.Response:
        content_type = request.content_type
        accepted = [store.JSON_PATCH, store.MERGE_PATCH]
        if not info.custom:
            accepted.append(store.STRATEGIC_PATCH)
        if content_type == APPLY_PATCHES[0]:
            return await self._apply(request, info, namespace, name, subresource, dry_run)
        if content_type in APPLY_PATCHES:
            raise errors.unsupported_media_type(content_type, [*accepted, APPLY_PATCHES[0]])
        if content_type == store.STRATEGIC_PATCH and info.custom:
            raise errors.unsupported_media_type(
                content_type,
                accepted,
                "strategic merge patch is not supported for custom resources",
            )
        if content_type not in accepted:
            raise errors.unsupported_media_type(content_type, accepted)
        patch = json.loads(await _read_body(request) or b"null")
        warnings: list[str] = []
        if subresource == "scale":
            scale = self.store.patch_scale(
                info,
                namespace,
                name,
                content_type,
                patch,
                dry_run=dry_run,
                field_validation=_field_validation(request.query),
                warnings=warnings,
            )
            return _warned(self._scale_response(info, scale, request), warnings)
        if content_type == store.MERGE_PATCH:
            self._check_fields(info, patch, request.query, warnings)
        record = self.store.patch(
            info, namespace, name, content_type, patch, subresource=subresource, dry_run=dry_run
        )
        return _warned(_json_response(record.projected(info.api_version)), warnings)

    async def _apply(
        self,
        request: web.BaseRequest,
        info: resources.ResourceInfo,
        namespace: str | None,
        name: str,
        subresource: str | None,
        dry_run: bool,
    ) -> web.Response:
        """Server-side apply, approximated: the applied configuration creates the object, or is
        merged into it (a JSON merge patch for a custom resource, a strategic merge patch for a
        built-in kind). No field ownership: no conflicts (as with `--force-conflicts`), no
        `managedFields`, and a field left out of a later apply is kept, not removed."""
        if not request.query.get("fieldManager"):
            raise errors.bad_request("fieldManager is required for apply requests")
        try:
            body = yaml.safe_load(await _read_body(request) or b"")
        except yaml.YAMLError as e:
            raise errors.bad_request(f"error decoding YAML: {e}") from None
        if not isinstance(body, dict) or not isinstance(body.get("metadata") or {}, dict):
            raise errors.bad_request("the applied configuration must be an object")
        applied_name = (body.get("metadata") or {}).get("name")
        if applied_name and applied_name != name:
            raise errors.bad_request(
                f"the name of the object ({applied_name}) does not match the name on the URL "
                f"({name})"
            )
        warnings: list[str] = []
        if subresource == "scale":
            # applied to the Scale as a merge patch (no field ownership, as for the rest)
            scale = self.store.patch_scale(
                info,
                namespace,
                name,
                store.MERGE_PATCH,
                body,
                dry_run=dry_run,
                field_validation=_field_validation(request.query),
                warnings=warnings,
            )
            return _warned(self._scale_response(info, scale, request), warnings)
        self._check_fields(info, body, request.query, warnings)
        if self.store.find(info, namespace, name) is None and subresource is None:
            body.setdefault("metadata", {})["name"] = name
            record = self.store.create(info, namespace, body, dry_run=dry_run)
            return _warned(_json_response(record.projected(info.api_version), status=201), warnings)
        patch = {k: v for k, v in body.items() if k not in ("apiVersion", "kind")}
        patch_type = store.MERGE_PATCH if info.custom else store.STRATEGIC_PATCH
        record = self.store.patch(
            info, namespace, name, patch_type, patch, subresource=subresource, dry_run=dry_run
        )
        return _warned(_json_response(record.projected(info.api_version)), warnings)

    # --- list, log and watch --------------------------------------------------------------

    def _list_body(
        self,
        info: resources.ResourceInfo,
        records: list[watching.Record],
        rv: int,
        continue_token: str | None,
    ) -> bytes:
        meta: dict[str, Any] = {"resourceVersion": str(rv)}
        if continue_token:
            meta["continue"] = continue_token
        head = _dumps(
            {"kind": f"{info.kind}List", "apiVersion": info.api_version, "metadata": meta}
        )
        api_version = info.api_version
        items = b",".join(r.projected(api_version) for r in records)
        return head[:-1] + b',"items":[' + items + b"]}"

    def _table(
        self,
        info: resources.ResourceInfo,
        records: list[watching.Record],
        rv: str,
        continue_token: str | None,
        params: Any,
        accept: str | None,
    ) -> web.Response:
        """A `meta.k8s.io` Table of the records (what `kubectl get` asks for)."""
        include = tables.check_include(params.get("includeObject"))
        objects = [
            json.loads(r.projected(info.api_version)) if include == "Object" else r.obj
            for r in records
        ]
        body = tables.table(
            info.printer,
            objects,
            resource_version=rv,
            continue_token=continue_token,
            include=include,
            version=tables.table_version(accept or ""),
        )
        return _json_response(_dumps(body))

    def _list(
        self,
        info: resources.ResourceInfo,
        namespace: str | None,
        labels: selectors.LabelSelector,
        fields: selectors.FieldSelector,
        params: Any,
        request: web.BaseRequest,
    ) -> web.Response:
        limit = _int_param(params, "limit")
        result = self.store.list(
            info,
            namespace,
            labels=labels,
            fields=fields,
            limit=limit if limit and limit > 0 else None,
            continue_token=params.get("continue") or None,
        )
        accept = request.headers.get("Accept")
        if tables.wants_table(accept):
            return self._table(
                info, result.records, str(result.rv), result.continue_token, params, accept
            )
        return _json_response(
            self._list_body(info, result.records, result.rv, result.continue_token)
        )

    def _log(
        self, info: resources.ResourceInfo, namespace: str, name: str, params: Any
    ) -> web.Response:
        self.store.get(info, namespace, name)
        container = params.get("container")
        text = self.log_reader(namespace, name, container) if self.log_reader else None
        if text is None:
            raise errors.bad_request(
                f'container "{container or ""}" in pod "{name}" is waiting to start: '
                "no logs (localcluster keeps logs only of pods it runs as processes)"
            )
        return web.Response(text=text, content_type="text/plain")

    async def _watch(
        self,
        request: web.BaseRequest,
        info: resources.ResourceInfo,
        namespace: str | None,
        labels: selectors.LabelSelector,
        fields: selectors.FieldSelector,
    ) -> web.StreamResponse:
        params = request.query
        timeout = _int_param(params, "timeoutSeconds")
        seconds = float(timeout) if timeout else random.uniform(*self.default_watch_seconds)
        bookmarks = _flag(params.get("allowWatchBookmarks"))
        send_initial = _flag(params.get("sendInitialEvents"))
        accept = request.headers.get("Accept")
        as_table = (
            _TableEvents(info, tables.check_include(params.get("includeObject")), accept or "")
            if tables.wants_table(accept)
            else None
        )
        wake = asyncio.Event()
        response = web.StreamResponse(status=200, headers={"Content-Type": JSON})
        response.enable_chunked_encoding()
        try:
            watcher = self.store.watch(
                info,
                namespace,
                since=params.get("resourceVersion"),
                labels=labels,
                fields=fields,
                notify=wake.set,
                initial_events_end=send_initial,
            )
        except errors.ApiError as e:
            if e.code != 410:
                raise
            await response.prepare(request)
            await response.write(watching.event_line(watching.ERROR, e.to_json()))
            await response.write_eof()
            return response
        open_watch = OpenWatch(info.name, namespace, request, watcher)
        self._open.add(open_watch)
        self._watch_set_changed()
        loop = asyncio.get_running_loop()
        # Two timers that set the wake event (end of the watch, next bookmark), armed once each
        # instead of a timeout per wait: an idle wait costs nothing, a busy one little.
        deadline = loop.time() + seconds
        end_timer = loop.call_at(deadline, wake.set)
        next_bookmark = loop.time() + self.bookmark_interval
        bookmark_timer = loop.call_at(next_bookmark, wake.set) if bookmarks else None
        try:
            await response.prepare(request)
            while True:
                if watcher.pending:
                    chunk = watcher.take()
                    await response.write(as_table.convert(chunk) if as_table else chunk)
                    if self.watch_flush_seconds:
                        await asyncio.sleep(self.watch_flush_seconds)
                    continue
                if watcher.closed:
                    break
                now = loop.time()
                if now >= deadline:
                    break
                if bookmarks and now >= next_bookmark:
                    await response.write(self.store.bookmark(info))
                    next_bookmark = now + self.bookmark_interval
                    bookmark_timer = loop.call_at(next_bookmark, wake.set)
                    continue
                wake.clear()
                if watcher.pending or watcher.closed:
                    continue
                await wake.wait()
            if request.transport is not None and not request.transport.is_closing():
                await response.write_eof()
        except (ConnectionResetError, ConnectionError):
            logger.debug("watch client went away", extra={"resource": info.name})
        finally:
            end_timer.cancel()
            if bookmark_timer is not None:
                bookmark_timer.cancel()
            self.store.unwatch(watcher)
            self._open.discard(open_watch)
            self._watch_set_changed()
        return response


class _TableEvents:
    """Watch events as Tables (`kubectl get -w`): each object a one-row Table, the column
    definitions in the first event only, as kube-apiserver sends them."""

    def __init__(self, info: resources.ResourceInfo, include: str, accept: str) -> None:
        self.info = info
        self.include = include
        self.version = tables.table_version(accept)
        self.headers = True

    def convert(self, chunk: bytes) -> bytes:
        lines = []
        for line in chunk.splitlines():
            if not line.strip():
                continue
            event = json.loads(line)
            obj = event.get("object")
            if event.get("type") in (watching.ADDED, watching.MODIFIED, watching.DELETED) and (
                isinstance(obj, dict) and isinstance(obj.get("metadata"), dict)
            ):
                rv = str(obj["metadata"].get("resourceVersion", ""))
                event["object"] = tables.table(
                    self.info.printer,
                    [obj],
                    resource_version=rv,
                    include=self.include,
                    version=self.version,
                    headers=self.headers,
                )
                self.headers = False
            lines.append(_dumps(event) + b"\n")
        return b"".join(lines)


ENDPOINTS_DEPRECATED = "v1 Endpoints is deprecated in v1.33+; use discovery.k8s.io/v1 EndpointSlice"


def _plural(rest: list[str]) -> str | None:
    """The resource a request names: `pods` in `[watch/]namespaces/ns/pods/name/...`."""
    if rest[:1] == ["watch"]:
        rest = rest[1:]
    if len(rest) >= 3 and rest[0] == "namespaces":
        return rest[2]
    return rest[0] if rest else None


AGGREGATED_MEDIA = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList"


def _wants_aggregated(request: web.BaseRequest) -> bool:
    """kubectl (client-go) asks `/api` and `/apis` for aggregated discovery first."""
    accept = request.headers.get("Accept", "")
    return "as=APIGroupDiscoveryList" in accept and "v=v2" in accept


MAX_BODY_BYTES = 3 * 1024 * 1024  # kube-apiserver's limit on a request body
FIELD_VALIDATION = ("Strict", "Warn", "Ignore")


async def _read_body(request: web.BaseRequest) -> bytes:
    """The request's body, refused with 413 past kube-apiserver's 3 MiB (aiohttp's own 1 MiB
    limit would answer 500)."""
    too_large = errors.ApiError(
        413, "RequestEntityTooLarge", f"Request entity too large: limit is {MAX_BODY_BYTES}"
    )
    if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
        raise too_large
    chunks: list[bytes] = []
    size = 0
    while chunk := await request.content.read(MAX_BODY_BYTES + 1 - size):
        chunks.append(chunk)
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise too_large
    return b"".join(chunks)


def _field_validation(params: Any) -> str:
    mode = str(params.get("fieldValidation") or "Warn")
    if mode not in FIELD_VALIDATION:
        raise errors.bad_request(
            f"fieldValidation {mode!r} is not one of {', '.join(FIELD_VALIDATION)}"
        )
    return mode


def _warned(response: web.Response, warnings: list[str]) -> web.Response:
    """A `Warning: 299 - "…"` header per warning, as kube-apiserver sends them."""
    for warning in warnings:
        response.headers.add("Warning", f"299 - {json.dumps(warning)}")
    return response
