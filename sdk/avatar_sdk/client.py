"""AvatarSessionClient: the agent's side of the AvatarSession API, on asyncio.

An agent asks for an avatar by creating an AvatarSession and waits until its worker has joined
the room. Everything here runs on the agent's event loop and never blocks it
(`kubernetes_asyncio`; responses are read as raw JSON, as the operator does).

Design:

* **One avatar per room.** `ensure()`/`create()` name the session after the room
  (`api.session_name_for_room`), so a retried call, or a second agent process for the same room,
  hits AlreadyExists and gets the existing session back instead of starting a second avatar.
  The name belonging to another room is a `SessionConflict`; a session for the room that has
  already ended (kept for `ttlSecondsAfterFinished`) is replaced, since it has no avatar left.
* **Waiting watches, never polls.** `wait_until_joined()` takes one snapshot and then follows a
  watch from its resourceVersion. A dropped connection or a watch the server ends is resumed
  from the last resourceVersion seen (bookmarks included); a resourceVersion the server has
  compacted away (410 Gone) takes a fresh snapshot, and what changed in between is replayed as
  events. Joined returns; Failed/Ended, deletion and the deadline raise.
* **Errors a user can act on.** API failures are translated once, here, into `AvatarError`
  subclasses (`avatar_sdk.errors`, re-exported here) whose messages say what to do: the CRD is
  missing → install the chart; Forbidden → the exact Role rule; Unschedulable → the operator's
  capacity message; a join timeout → the session's last conditions; a failure → its endReason
  and message.
* **Configuration** (`avatar_sdk.kubeconfig`) comes from the Pod's ServiceAccount when running
  in a cluster, else from a kubeconfig (`$KUBECONFIG` or `~/.kube/config`), as kubectl does;
  the namespace from the ServiceAccount or the kubeconfig context unless given. Unlike the
  operator's client (`avatar_operator.kube`), this one keeps kubernetes_asyncio's `trust_env`
  session: an agent makes a handful of calls, and should honour HTTPS_PROXY/NO_PROXY as
  kubectl does.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import random
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping
from types import TracebackType
from typing import Any, Final, NamedTuple

import aiohttp
import pydantic
from kubernetes_asyncio import client as k8s
from kubernetes_asyncio.client.exceptions import ApiException

from avatar_sdk import api, pools
from avatar_sdk import kubeconfig as kube_config
from avatar_sdk.errors import (
    ApiError,
    ApiUnavailable,
    AvatarError,
    CRDNotInstalled,
    InvalidSession,
    JoinTimeout,
    NamespaceNotFound,
    PermissionDenied,
    SessionConflict,
    SessionDeleted,
    SessionFailed,
    SessionNotFound,
    SessionWaitError,
    Unschedulable,
)

logger = logging.getLogger(__name__)


class PoolNotFound(AvatarError):
    """No AvatarPool of that name in the namespace."""

    def __init__(self, namespace: str, name: str) -> None:
        super().__init__(
            f'avatar pool "{namespace}/{name}" not found (`avatarctl pool get -n {namespace}` '
            "lists the pools there)"
        )
        self.namespace = namespace
        self.name = name


class InvalidPool(AvatarError):
    """The API server refused a change to a pool (a replica count out of bounds, ...)."""


Obj = dict[str, Any]
# Module-level aliases: inside AvatarSessionClient, `list` names its method.
Objs = list[Obj]
Sessions = list[api.AvatarSession]

RESOURCE: Final = f"{api.PLURAL}.{api.GROUP}"  # avatarsessions.avatar-operator.dev
# The README's "Install on Kubernetes" command (a chart test keeps the two in step).
CHART_INSTALL: Final = (
    "helm install avatar-operator ./charts/avatar-operator "
    "--namespace avatar-system --create-namespace --wait"
)
# Every verb the client and avatarctl use on sessions; the agent's Role grants exactly these.
SESSION_VERBS: Final = ("create", "get", "list", "watch", "delete")
POOL_RESOURCE: Final = f"{pools.POOL_PLURAL}.{api.GROUP}"  # avatarpools.avatar-operator.dev
POOL_SCALE_RESOURCE: Final = f"{pools.POOL_PLURAL}/scale"
# What `avatarctl pool` uses: get and list pools, patch their scale subresource.
POOL_VERBS: Final = ("get", "list")
SERVICE_ACCOUNT_DIR: Final = kube_config.SERVICE_ACCOUNT_DIR

ADDED: Final = "ADDED"
MODIFIED: Final = "MODIFIED"
DELETED: Final = "DELETED"
_SYNCED: Final = "SYNCED"  # internal: a snapshot has been replayed


# ---------------------------------------------------------------------------------------------
# reading sessions


def parse_session(obj: Mapping[str, Any]) -> api.AvatarSession:
    """A typed view of a raw AvatarSession; never raises.

    A spec the models refuse (made by hand past an older CRD, or written by a newer one) keeps
    its room and participant ids and shows the defaults for the rest: a list or a wait must not
    fail on one odd object, and the operator reports such a spec in the status anyway.
    """
    raw_spec = obj.get("spec")
    spec_body: Mapping[str, Any] = raw_spec if isinstance(raw_spec, dict) else {}
    try:
        spec = api.AvatarSessionSpec.model_validate(spec_body)
    except pydantic.ValidationError:
        spec = api.AvatarSessionSpec.model_construct(
            room_id=str(spec_body.get("roomId") or ""),
            participant_id=_str_or_none(spec_body.get("participantId")),
            agent_participant_id=_str_or_none(spec_body.get("agentParticipantId")),
        )
    return api.AvatarSession(
        metadata=dict(obj.get("metadata") or {}),
        spec=spec,
        status=api.parse_status(obj.get("status")),
    )


def _str_or_none(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def parse_pool(obj: Mapping[str, Any]) -> pools.AvatarPool:
    """A typed view of a raw AvatarPool; never raises (a spec the models refuse shows the
    defaults, and only its replica count when that is readable)."""
    raw_spec = obj.get("spec")
    spec_body: Mapping[str, Any] = raw_spec if isinstance(raw_spec, dict) else {}
    try:
        spec = pools.AvatarPoolSpec.model_validate(spec_body)
    except pydantic.ValidationError:
        replicas = spec_body.get("replicas")
        spec = pools.AvatarPoolSpec.model_construct(
            template=pools.AvatarPoolTemplate(),
            replicas=replicas if isinstance(replicas, int) else pools.DEFAULT_REPLICAS,
            when_empty=pools.PoolFallback.COLD,
        )
    return pools.AvatarPool(
        metadata=dict(obj.get("metadata") or {}),
        spec=spec,
        status=pools.parse_pool_status(obj.get("status")),
    )


def describe_conditions(status: api.AvatarSessionStatus) -> str:
    """`Scheduled=True (Placed: …); PodReady=False (…)`: the detail a timeout reports."""
    if not status.conditions:
        return "none reported yet"
    parts = []
    for c in status.conditions:
        detail = f"{c.reason}: {c.message}" if c.message else c.reason
        parts.append(f"{c.type.value}={c.status.value} ({detail})")
    return "; ".join(parts)


def unschedulable_message(status: api.AvatarSessionStatus) -> str | None:
    """The operator's capacity message when the session waits for a GPU, else None."""
    scheduled = status.condition(api.ConditionType.SCHEDULED)
    if status.phase is not api.Phase.PENDING:
        return None
    if scheduled is not None and scheduled.reason == "Unschedulable":
        return scheduled.message or status.message or "no GPU has room"
    return None


def _deleting(session: api.AvatarSession) -> bool:
    return bool(session.metadata.get("deletionTimestamp"))


class SessionEvent(NamedTuple):
    """One change to a session: ADDED, MODIFIED or DELETED, with the raw object."""

    type: str
    object: Obj

    @property
    def session(self) -> api.AvatarSession:
        return parse_session(self.object)

    @property
    def name(self) -> str:
        return str((self.object.get("metadata") or {}).get("name", ""))


class _Expired(Exception):
    """The watch's resourceVersion is gone (410): take a new snapshot."""


class _WatchFailed(Exception):
    """The server ended a watch with an ERROR event other than 410: resume it."""


# ---------------------------------------------------------------------------------------------
# configuration


async def load_api_client(
    kubeconfig: str | os.PathLike[str] | None = None,
    context: str | None = None,
) -> tuple[Any, str]:
    """An `ApiClient` and the namespace its configuration names (see `avatar_sdk.kubeconfig`).

    In a Pod, the ServiceAccount is read from this module's `SERVICE_ACCOUNT_DIR`.
    """
    return await kube_config.load_api_client(
        kubeconfig, context, service_account_dir=SERVICE_ACCOUNT_DIR
    )


# ---------------------------------------------------------------------------------------------
# the client


class AvatarSessionClient:
    """AvatarSessions in one namespace: create, get, list, watch, wait, delete.

    ```python
    async with await AvatarSessionClient.from_config() as sessions:
        session = await sessions.create("abcd-efgh-ijkl")
        session = await sessions.wait_until_joined(session.name, timeout=90)
        print(session.status.participant_id, session.status.placement)
        await sessions.delete(session.name)
    ```
    """

    def __init__(
        self,
        api_client: Any,
        namespace: str = "default",
        *,
        owns_api_client: bool = False,
        request_timeout: float = 30.0,
        watch_timeout_seconds: int = 300,
    ) -> None:
        self.namespace = namespace
        self.api_client = api_client
        self.request_timeout = request_timeout
        self.watch_timeout_seconds = watch_timeout_seconds
        # Typed as Any: the generated stubs want model objects where the API takes plain dicts;
        # this class is the typed boundary.
        self._custom: Any = k8s.CustomObjectsApi(api_client)
        self._core: Any = k8s.CoreV1Api(api_client)
        self._owns_api_client = owns_api_client
        self._closed = False

    @classmethod
    async def from_config(
        cls,
        namespace: str | None = None,
        *,
        kubeconfig: str | os.PathLike[str] | None = None,
        context: str | None = None,
        request_timeout: float = 30.0,
        watch_timeout_seconds: int = 300,
    ) -> AvatarSessionClient:
        """A client from in-cluster config or a kubeconfig (see `load_api_client`)."""
        api_client, default_namespace = await load_api_client(kubeconfig, context)
        return cls(
            api_client,
            namespace or default_namespace,
            owns_api_client=True,
            request_timeout=request_timeout,
            watch_timeout_seconds=watch_timeout_seconds,
        )

    async def aclose(self) -> None:
        if self._owns_api_client and not self._closed:
            self._closed = True
            await self.api_client.close()

    async def __aenter__(self) -> AvatarSessionClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    # --- create -----------------------------------------------------------------------------

    def build(
        self,
        room_id: str,
        *,
        name: str | None = None,
        participant_id: str | None = None,
        agent_participant_id: str | None = None,
        spec: api.AvatarSessionSpec | Mapping[str, Any] | None = None,
        labels: Mapping[str, str] | None = None,
        annotations: Mapping[str, str] | None = None,
    ) -> Obj:
        """The AvatarSession manifest `create()` sends; raises InvalidSession on a bad spec.

        Only what was set goes into the spec: the CRD and the operator apply the defaults.
        """
        if isinstance(spec, api.AvatarSessionSpec):
            body = spec.model_dump(mode="json", by_alias=True, exclude_unset=True)
        else:
            body = json.loads(json.dumps(dict(spec or {})))
        if body.get("roomId") not in (None, room_id):
            raise InvalidSession(f"spec.roomId {body['roomId']!r} differs from room {room_id!r}")
        body["roomId"] = room_id
        if participant_id is not None:
            body["participantId"] = participant_id
        if agent_participant_id is not None:
            body["agentParticipantId"] = agent_participant_id
        try:
            parsed = api.parse_spec(body)
        except api.SpecError as exc:
            raise InvalidSession(f"invalid AvatarSession spec: {exc}") from exc
        metadata: Obj = {
            "name": name or api.session_name_for_room(room_id),
            "namespace": self.namespace,
        }
        if labels:
            metadata["labels"] = dict(labels)
        if annotations:
            metadata["annotations"] = dict(annotations)
        return {
            "apiVersion": api.API_VERSION,
            "kind": api.KIND,
            "metadata": metadata,
            "spec": parsed.model_dump(
                mode="json", by_alias=True, exclude_unset=True, exclude_none=True
            ),
        }

    async def create(
        self,
        room_id: str,
        *,
        name: str | None = None,
        participant_id: str | None = None,
        agent_participant_id: str | None = None,
        spec: api.AvatarSessionSpec | Mapping[str, Any] | None = None,
        labels: Mapping[str, str] | None = None,
        annotations: Mapping[str, str] | None = None,
    ) -> api.AvatarSession:
        """The room's session: created, or the one that already exists (see `ensure`)."""
        session, _ = await self.ensure(
            room_id,
            name=name,
            participant_id=participant_id,
            agent_participant_id=agent_participant_id,
            spec=spec,
            labels=labels,
            annotations=annotations,
        )
        return session

    async def ensure(
        self,
        room_id: str,
        *,
        name: str | None = None,
        participant_id: str | None = None,
        agent_participant_id: str | None = None,
        spec: api.AvatarSessionSpec | Mapping[str, Any] | None = None,
        labels: Mapping[str, str] | None = None,
        annotations: Mapping[str, str] | None = None,
        replace_finished: bool = True,
        timeout: float = 30.0,  # noqa: ASYNC109 - its expiry is reported as its own error
    ) -> tuple[api.AvatarSession, bool]:
        """Create the room's session unless it exists; returns it and whether this call made it.

        Safe to call concurrently from any number of tasks or processes: exactly one creates,
        the others get the same session back. A session of that name for another room is a
        `SessionConflict`. A finished one for this room (Ended/Failed, kept for its TTL) has no
        avatar left: it is deleted and created anew when `replace_finished`; one being deleted
        is waited out, for at most `timeout` seconds.
        """
        manifest = self.build(
            room_id,
            name=name,
            participant_id=participant_id,
            agent_participant_id=agent_participant_id,
            spec=spec,
            labels=labels,
            annotations=annotations,
        )
        name = str(manifest["metadata"]["name"])
        deadline = asyncio.timeout(timeout)
        try:
            async with deadline:
                while True:
                    result = await self._create_or_adopt(manifest, room_id, replace_finished)
                    if result is not None:
                        return result
        except TimeoutError:
            if not deadline.expired():
                raise
            raise AvatarError(
                f'avatar session "{self.namespace}/{name}" for room {room_id!r} is being '
                f"deleted and was still there after {timeout}s; try again later"
            ) from None

    async def _create_or_adopt(
        self, manifest: Obj, room_id: str, replace_finished: bool
    ) -> tuple[api.AvatarSession, bool] | None:
        """One attempt: created, adopted, or None when an old session had to go first."""
        name = str(manifest["metadata"]["name"])
        try:
            created = await self._call(
                "create",
                None,
                self._custom_request(
                    "create",
                    api.PLURAL,
                    manifest,
                    # as kubectl does: a field the CRD does not declare is an error, not pruned
                    field_validation="Strict",
                ),
                conflict_ok=True,
            )
        except _Conflict:
            pass
        else:
            logger.info("avatar session created", extra={"session": name, "room": room_id})
            return parse_session(created), True
        try:
            existing = parse_session(await self.get_object(name))
        except SessionNotFound:
            return None  # deleted between our create and our get: create again
        if existing.spec.room_id != room_id:
            raise SessionConflict(
                f'avatar session "{self.namespace}/{name}" exists for room '
                f"{existing.spec.room_id!r}, not {room_id!r}: pass another name"
            )
        uid = str(existing.metadata.get("uid", ""))
        phase = existing.status.phase
        if _deleting(existing):
            await self._wait_gone(name, uid)
            return None
        if phase is not None and phase.finished and replace_finished:
            logger.info(
                "replacing a finished avatar session", extra={"session": name, "phase": phase}
            )
            await self._delete(name, uid=uid)
            await self._wait_gone(name, uid)
            return None
        return existing, False

    # --- read -------------------------------------------------------------------------------

    async def get(self, name: str) -> api.AvatarSession:
        return parse_session(await self.get_object(name))

    async def get_object(self, name: str) -> Obj:
        """The session as the API server returns it (a dict)."""
        return await self._call("get", name, self._custom_request("get", api.PLURAL, name))

    async def get_for_room(self, room_id: str) -> api.AvatarSession:
        """The session `create(room_id)` made (by its deterministic name)."""
        return await self.get(api.session_name_for_room(room_id))

    async def list(
        self, *, all_namespaces: bool = False, label_selector: str | None = None
    ) -> Sessions:
        items, _ = await self.list_objects(
            all_namespaces=all_namespaces, label_selector=label_selector
        )
        return [parse_session(item) for item in items]

    def _custom_request(
        self,
        verb: str,
        plural: str,
        *args: Any,
        all_namespaces: bool = False,
        subresource: str = "",
        **options: Any,
    ) -> Any:
        """A request for this API group's `plural` (not yet awaited): CustomObjectsApi's
        `{verb}_namespaced_custom_object[_{subresource}]` with group, version and namespace
        filled in (`all_namespaces`: the `_cluster_` one), the body left raw, the client's
        request timeout unless `options` give one."""
        options.setdefault("_preload_content", False)
        options.setdefault("_request_timeout", self.request_timeout)
        suffix = f"_{subresource}" if subresource else ""
        if all_namespaces:
            method = getattr(self._custom, f"{verb}_cluster_custom_object{suffix}")
            return method(api.GROUP, api.VERSION, plural, *args, **options)
        method = getattr(self._custom, f"{verb}_namespaced_custom_object{suffix}")
        return method(api.GROUP, api.VERSION, self.namespace, plural, *args, **options)

    def _list_call(self, all_namespaces: bool, options: Obj) -> Any:
        """The sessions' list (or watch, with watch=True in `options`), not yet awaited."""
        return self._custom_request("list", api.PLURAL, all_namespaces=all_namespaces, **options)

    async def list_objects(
        self,
        *,
        all_namespaces: bool = False,
        label_selector: str | None = None,
        field_selector: str | None = None,
    ) -> tuple[Objs, str]:
        """Raw sessions and the list's resourceVersion."""
        options: Obj = {}
        if label_selector:
            options["label_selector"] = label_selector
        if field_selector:
            options["field_selector"] = field_selector
        call = self._list_call(all_namespaces, options)
        body = await self._call("list", None, call, all_namespaces=all_namespaces)
        return _items(body, api.KIND), str(
            (body.get("metadata") or {}).get("resourceVersion") or ""
        )

    async def events(self, name: str, uid: str | None = None, *, kind: str = api.KIND) -> Objs:
        """The core/v1 Events about a session (or another `kind`: AvatarPool), oldest first
        (needs `list events`)."""
        selector = f"involvedObject.kind={kind},involvedObject.name={name}"
        body = await self._call(
            "list",
            None,
            self._core.list_namespaced_event(
                self.namespace,
                field_selector=selector,
                _preload_content=False,
                _request_timeout=self.request_timeout,
            ),
            resource="events",
        )
        items: Objs = [
            e
            for e in body.get("items") or []
            if uid is None or (e.get("involvedObject") or {}).get("uid") in (None, "", uid)
        ]
        return sorted(items, key=_event_time)

    async def list_nodes(self) -> Objs:
        """Raw Node objects (for capacity; needs a ClusterRole to `list nodes`)."""
        body = await self._call(
            "list",
            None,
            self._core.list_node(_preload_content=False, _request_timeout=self.request_timeout),
            resource="nodes",
        )
        items: Objs = body.get("items") or []
        return items

    # --- pools (AvatarPool: warm workers) ----------------------------------------------------

    async def get_pool_object(self, name: str) -> Obj:
        """The AvatarPool as the API server returns it; PoolNotFound when there is none."""
        return await self._call(
            "get",
            name,
            self._custom_request("get", pools.POOL_PLURAL, name),
            resource=POOL_RESOURCE,
        )

    async def get_pool(self, name: str) -> pools.AvatarPool:
        return parse_pool(await self.get_pool_object(name))

    async def list_pool_objects(self, *, all_namespaces: bool = False) -> Objs:
        """Raw AvatarPools of the namespace (or of every namespace)."""
        call = self._custom_request("list", pools.POOL_PLURAL, all_namespaces=all_namespaces)
        body = await self._call(
            "list", None, call, resource=POOL_RESOURCE, all_namespaces=all_namespaces
        )
        return _items(body, pools.POOL_KIND)

    async def create_pool(
        self,
        name: str,
        *,
        replicas: int = pools.DEFAULT_REPLICAS,
        template: pools.AvatarPoolTemplate | Mapping[str, Any] | None = None,
        when_empty: pools.PoolFallback | str = pools.PoolFallback.COLD,
    ) -> pools.AvatarPool:
        """Create an AvatarPool: `replicas` warm workers prepared with `template` (the session
        settings they serve). A template or count the models refuse raises InvalidPool,
        naming the field, before anything is sent."""
        try:
            spec = pools.AvatarPoolSpec.model_validate(
                {
                    "replicas": replicas,
                    "template": template if template is not None else {},
                    "whenEmpty": when_empty,
                }
            )
        except ValueError as exc:
            raise InvalidPool(f"AvatarPool {name}: {exc}") from None
        body = {
            "apiVersion": api.API_VERSION,
            "kind": pools.POOL_KIND,
            "metadata": {"name": name, "namespace": self.namespace},
            "spec": spec.to_wire(),
        }
        created = await self._call(
            "create",
            name,
            self._custom_request("create", pools.POOL_PLURAL, body),
            resource=POOL_RESOURCE,
        )
        return parse_pool(created)

    async def delete_pool(self, name: str) -> bool:
        """Delete an AvatarPool (its idle workers go with it; claimed ones stay with their
        sessions); False if there was none."""
        try:
            await self._call(
                "delete",
                name,
                self._custom_request("delete", pools.POOL_PLURAL, name),
                resource=POOL_RESOURCE,
            )
        except PoolNotFound:
            return False
        return True

    async def wait_until_pool_ready(
        self,
        name: str,
        *,
        timeout: float = 120.0,  # noqa: ASYNC109 - its expiry says what is ready and what not
        poll: float = 0.1,
    ) -> pools.AvatarPool:
        """Until all the pool's wanted idle workers are ready (`status.readyReplicas` ≥
        `spec.replicas`); TimeoutError naming what is ready and what is not."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            pool = await self.get_pool(name)
            if pool.status.ready_replicas >= pool.spec.replicas:
                return pool
            if loop.time() >= deadline:
                raise TimeoutError(
                    f"AvatarPool {self.namespace}/{name}: {pool.status.ready_replicas} of "
                    f"{pool.spec.replicas} workers ready after {timeout:.0f} s "
                    f"({pool.status.starting} starting); see `avatarctl pool describe {name}`"
                )
            await asyncio.sleep(poll)

    async def scale_pool(self, name: str, replicas: int) -> Obj:
        """Set the pool's wanted idle workers through its scale subresource (as `kubectl
        scale` does); returns the autoscaling/v1 Scale the API server answers."""
        if not 0 <= replicas <= pools.MAX_REPLICAS:
            raise InvalidPool(
                f"replicas must be between 0 and {pools.MAX_REPLICAS}, got {replicas}"
            )
        scale = await self._call(
            "patch",
            name,
            self._custom_request(
                "patch",
                pools.POOL_PLURAL,
                name,
                {"spec": {"replicas": replicas}},
                subresource="scale",
                _content_type="application/merge-patch+json",
            ),
            resource=POOL_SCALE_RESOURCE,
        )
        # the API server leaves out `replicas: 0` (omitempty): say 0 on every backend
        scale.setdefault("spec", {}).setdefault("replicas", 0)
        return scale

    async def pool_workers(self, name: str) -> Objs:
        """The pool's worker Pods (label `avatar-operator.dev/pool=NAME`), by name (needs
        `list pods`)."""
        body = await self._call(
            "list",
            None,
            self._core.list_namespaced_pod(
                self.namespace,
                label_selector=pools.workers_selector(name),
                _preload_content=False,
                _request_timeout=self.request_timeout,
            ),
            resource="pods",
        )
        items: Objs = body.get("items") or []
        return sorted(items, key=lambda pod: str((pod.get("metadata") or {}).get("name", "")))

    # --- delete -----------------------------------------------------------------------------

    async def delete(
        self,
        name: str,
        *,
        uid: str | None = None,
        wait: bool = False,
        timeout: float = 30.0,  # noqa: ASYNC109 - bounds `wait` only
    ) -> bool:
        """Delete a session (its Pod and Secret go with it); False if it was not there.

        `uid` deletes only that incarnation: never a newer session that took the same name.
        `wait` returns once the object is gone.
        """
        deleted = await self._delete(name, uid=uid)
        if deleted and wait:
            deadline = asyncio.timeout(timeout)
            try:
                async with deadline:
                    await self._wait_gone(name, uid)
            except TimeoutError:
                if not deadline.expired():
                    raise
                raise AvatarError(
                    f'avatar session "{self.namespace}/{name}" was still there {timeout}s after '
                    "its deletion (a finalizer holds it?)"
                ) from None
        return deleted

    async def _delete(self, name: str, *, uid: str | None = None) -> bool:
        body: Obj = {"propagationPolicy": "Background"}
        if uid:
            body["preconditions"] = {"uid": uid}
        try:
            await self._call(
                "delete",
                name,
                self._custom_request("delete", api.PLURAL, name, body=body),
                conflict_ok=True,
            )
        except SessionNotFound:
            return False
        except _Conflict:  # the uid precondition failed: a newer session has the name
            return False
        logger.info("avatar session deleted", extra={"session": name})
        return True

    # --- watch and wait ---------------------------------------------------------------------

    async def watch(
        self, name: str | None = None, *, all_namespaces: bool = False
    ) -> AsyncIterator[SessionEvent]:
        """The sessions as they are (ADDED), then every change, for as long as it is iterated.

        Resumes on its own after dropped connections and expired resourceVersions.
        """
        async with contextlib.aclosing(self._follow(name, all_namespaces=all_namespaces)) as events:
            async for event in events:
                if event.type != _SYNCED:
                    yield event

    async def wait_until_joined(
        self,
        name: str,
        timeout: float | None = 120.0,  # noqa: ASYNC109 - its expiry is a JoinTimeout
        *,
        on_change: Callable[[api.AvatarSession], None] | None = None,
        fail_if_unschedulable: bool = False,
    ) -> api.AvatarSession:
        """Wait, watching, until the session's worker has joined the room; returns the session.

        Raises `SessionFailed` (Ended/Failed first: its endReason and message), `SessionDeleted`,
        `SessionNotFound`, and at the deadline `Unschedulable` (while no GPU has room: the
        operator's capacity message; at once with `fail_if_unschedulable`) or `JoinTimeout`
        (the last conditions). `on_change` sees every state on the way (progress output).
        """
        last: api.AvatarSession | None = None
        deadline = asyncio.timeout(timeout)
        try:
            async with deadline, contextlib.aclosing(self._follow(name)) as events:
                async for event in events:
                    if event.type == _SYNCED:
                        if last is None:
                            raise SessionNotFound(self.namespace, name)
                        continue
                    if event.type == DELETED:
                        raise SessionDeleted(
                            f'avatar session "{self.namespace}/{name}" was deleted while '
                            "waiting for it to join",
                            last or event.session,
                        )
                    last = event.session
                    if on_change is not None:
                        on_change(last)
                    if self._joined(last, fail_if_unschedulable=fail_if_unschedulable):
                        return last
        except TimeoutError:
            if not deadline.expired():
                raise
            raise self._timeout_error(name, timeout, last) from None
        raise AssertionError("the watch ended")  # _follow never ends on its own

    def _joined(self, session: api.AvatarSession, *, fail_if_unschedulable: bool) -> bool:
        """True once joined; raises when the session can no longer join."""
        status = session.status
        where = f'avatar session "{self.namespace}/{session.name}"'
        if _deleting(session):
            raise SessionDeleted(f"{where} is being deleted", session)
        if status.phase is api.Phase.JOINED:
            return True
        if status.phase is not None and status.phase.finished:
            reason = status.end_reason.value if status.end_reason else "no endReason"
            message = status.message or describe_conditions(status)
            when = "after joining" if status.joined_at else "before joining"
            raise SessionFailed(
                f"{where} {status.phase.value.lower()} {when}: {reason}: {message}", session
            )
        if fail_if_unschedulable:
            capacity = unschedulable_message(status)
            if capacity is not None:
                raise Unschedulable(f"{where} cannot be scheduled: {capacity}", session)
        return False

    def _timeout_error(
        self, name: str, timeout: float | None, last: api.AvatarSession | None
    ) -> JoinTimeout:
        where = f'avatar session "{self.namespace}/{name}"'
        if last is None:
            return JoinTimeout(f"{where}: no state seen within {timeout}s", None)
        capacity = unschedulable_message(last.status)
        if capacity is not None:
            return Unschedulable(
                f"{where} was not scheduled within {timeout}s: {capacity} "
                "(`avatarctl capacity` shows what fits; free a GPU or ask for less "
                "spec.resources.vramMiB)",
                last,
            )
        phase = last.status.phase.value if last.status.phase else "no phase yet"
        return JoinTimeout(
            f"{where} did not join within {timeout}s (phase {phase}); last conditions: "
            f"{describe_conditions(last.status)}",
            last,
        )

    async def _wait_gone(self, name: str, uid: str | None) -> None:
        """Until no session `name` of incarnation `uid` exists (of any, when uid is None)."""

        def ours(obj: Obj) -> bool:
            return not uid or (obj.get("metadata") or {}).get("uid") == uid

        present = False
        async with contextlib.aclosing(self._follow(name)) as events:
            async for event in events:
                if event.type == _SYNCED:
                    if not present:
                        return
                elif event.type == DELETED or not ours(event.object):
                    return
                else:
                    present = True

    async def _follow(
        self, name: str | None, *, all_namespaces: bool = False
    ) -> AsyncGenerator[SessionEvent, None]:
        """Snapshot, SYNCED, then watch events; after a 410, a new snapshot replayed as the
        events that explain it (ADDED/MODIFIED/DELETED against what was known), then SYNCED."""
        selector = f"metadata.name={name}" if name else None
        known: dict[tuple[str, str], Obj] = {}
        while True:
            items, rv = await self.list_objects(
                all_namespaces=all_namespaces, field_selector=selector
            )
            current = {_key(item): item for item in items}
            for key, obj in known.items():
                if key not in current:
                    yield SessionEvent(DELETED, obj)
            for key, obj in current.items():
                previous = known.get(key)
                if previous is None:
                    yield SessionEvent(ADDED, obj)
                elif _rv(previous) != _rv(obj):
                    yield SessionEvent(MODIFIED, obj)
            known = current
            yield SessionEvent(_SYNCED, {})
            try:
                async for type_, obj in self._stream(rv, selector, all_namespaces):
                    if type_ == DELETED:
                        known.pop(_key(obj), None)
                    else:
                        known[_key(obj)] = obj
                    yield SessionEvent(type_, obj)
            except _Expired:
                logger.info("watch expired; taking a new snapshot", extra={"session": name})

    async def _stream(
        self, resource_version: str, field_selector: str | None, all_namespaces: bool
    ) -> AsyncGenerator[tuple[str, Obj], None]:
        """Watch events from `resource_version` on, for ever: a dropped connection or a watch
        the server ended is resumed from the last resourceVersion seen; 410 raises _Expired."""
        rv = resource_version
        failures = 0
        while True:
            options: Obj = {
                "watch": True,
                "allow_watch_bookmarks": True,
                "timeout_seconds": self.watch_timeout_seconds,
                "_preload_content": False,
                # connect, and read: a watch silent for longer than the server's own timeout
                # plus a margin has stalled (bookmarks keep a healthy one talking)
                "_request_timeout": (self.request_timeout, self.watch_timeout_seconds + 30),
            }
            if rv:
                options["resource_version"] = rv
            if field_selector:
                options["field_selector"] = field_selector
            call = self._list_call(all_namespaces, options)
            try:
                response = await call
            except (ApiException, aiohttp.ClientError, OSError, TimeoutError) as exc:
                failures += 1
                await self._backoff(failures, exc)
                continue
            if not 200 <= response.status <= 299:
                async with response:
                    body = await response.read()
                if response.status == 410:
                    raise _Expired
                if response.status < 500 and response.status != 429:
                    raise self._translate(
                        response.status,
                        str(response.reason or ""),
                        body,
                        "watch",
                        None,
                        all_namespaces=all_namespaces,
                    )
                failures += 1
                await self._backoff(failures, ApiError(response.status, "", ""))
                continue
            try:
                async with response:
                    while True:
                        line = await response.content.readline()
                        if not line:
                            break  # the server ended the watch (its timeout): resume
                        event = json.loads(line)
                        type_ = event.get("type")
                        obj = event.get("object") or {}
                        if type_ == "ERROR":
                            if obj.get("code") == 410:
                                raise _Expired
                            # anything else the server reports mid-stream: resume
                            raise _WatchFailed(f"{obj.get('code')} {obj.get('message')}")
                        rv = str((obj.get("metadata") or {}).get("resourceVersion") or rv)
                        failures = 0
                        if type_ in (ADDED, MODIFIED, DELETED):
                            yield type_, obj
            except (aiohttp.ClientError, OSError, TimeoutError, ValueError, _WatchFailed) as exc:
                failures += 1
                await self._backoff(failures, exc)

    @staticmethod
    async def _backoff(failures: int, exc: BaseException) -> None:
        delay = min(0.05 * 2**failures, 5.0) * random.uniform(0.5, 1.0)
        log = logger.info if failures == 1 else logger.warning
        log("watch interrupted; resuming", extra={"error": repr(exc), "retry_in_s": delay})
        await asyncio.sleep(delay)

    # --- errors -----------------------------------------------------------------------------

    async def _call(
        self,
        verb: str,
        name: str | None,
        call: Any,
        *,
        resource: str = RESOURCE,
        conflict_ok: bool = False,
        all_namespaces: bool = False,
    ) -> Obj:
        try:
            response = await call
            body = await response.read()
        except ApiException as exc:
            status, reason, body = int(exc.status or 0), str(exc.reason or ""), exc.body
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            host = getattr(self.api_client.configuration, "host", "?")
            raise ApiUnavailable(f"cannot reach the Kubernetes API at {host}: {exc!r}") from exc
        else:
            # With `_preload_content=False` the client hands error responses back instead of
            # raising: without this check a 404 or a 409 would read as an answer.
            status, reason = response.status, str(response.reason or "")
        if 200 <= status <= 299:
            result: Obj = json.loads(body) if body else {}
            return result
        if conflict_ok and status == 409:
            raise _Conflict
        raise self._translate(
            status, reason, body, verb, name, resource=resource, all_namespaces=all_namespaces
        )

    def _translate(
        self,
        code: int,
        reason: str,
        body: bytes | str | None,
        verb: str,
        name: str | None,
        *,
        resource: str = RESOURCE,
        all_namespaces: bool = False,
    ) -> AvatarError:
        """An error response as the error that says what to do about it."""
        message = body.decode(errors="replace") if isinstance(body, bytes) else str(body or "")
        details: Obj = {}
        with contextlib.suppress(TypeError, ValueError, AttributeError):
            status = json.loads(body or b"")
            reason = status.get("reason") or reason
            message = status.get("message") or message
            details = status.get("details") or {}
        if code == 404:
            if details.get("kind") == "namespaces":
                return NamespaceNotFound(
                    f'namespace "{self.namespace}" does not exist (create it, or pick another '
                    "namespace)"
                )
            if resource == RESOURCE and name is not None and details.get("name") == name:
                return SessionNotFound(self.namespace, name)
            if resource == RESOURCE:
                # a collection (or a name with no such details) that is not there: no CRD
                return CRDNotInstalled(
                    f"this cluster does not serve {RESOURCE} (the AvatarSession CRD is not "
                    f"installed): install the chart: {CHART_INSTALL}"
                )
            if resource in (POOL_RESOURCE, POOL_SCALE_RESOURCE):
                if name is not None and details.get("name") == name:
                    return PoolNotFound(self.namespace, name)
                return CRDNotInstalled(
                    f"this cluster does not serve {POOL_RESOURCE} (the AvatarPool CRD is not "
                    "installed): apply the chart's CRDs (kubectl apply --server-side -f "
                    f"charts/avatar-operator/crds/), or install the chart: {CHART_INSTALL}"
                )
        if code == 403:
            return permission_denied(
                verb, resource, self.namespace, message, all_namespaces=all_namespaces
            )
        if code == 401:
            return ApiUnavailable(
                f"the Kubernetes API refused the credentials (401 {reason}): {message}"
            )
        if code == 422 and resource == RESOURCE:
            return InvalidSession(f"the API server refused the AvatarSession: {message}")
        if code == 422 and resource in (POOL_RESOURCE, POOL_SCALE_RESOURCE):
            return InvalidPool(f"the API server refused the AvatarPool change: {message}")
        return ApiError(code, reason, message)


def permission_denied(
    verb: str, resource: str, namespace: str, message: str, *, all_namespaces: bool = False
) -> PermissionDenied:
    """The refusal, with the Role (or ClusterRole) rule that would have allowed the call."""
    group, plural, verbs = _RULES.get(resource, ("", resource, (verb,)))
    rule = (
        f'  - apiGroups: ["{group}"]\n'
        f'    resources: ["{plural}"]\n'
        f"    verbs: [{', '.join(json.dumps(v) for v in verbs)}]"
    )
    scope: str | None = namespace
    if all_namespaces or resource == "nodes":
        where, grant, scope = "cluster-wide", "a ClusterRole (and a ClusterRoleBinding)", None
    else:
        where = f'in namespace "{namespace}"'
        grant = f'a Role in "{namespace}" (and a RoleBinding)'
    text = (
        f"forbidden: cannot {verb} {resource} {where}. The API server said: {message}\n"
        f"Grant the agent's ServiceAccount this rule in {grant}:\n{rule}"
    )
    return PermissionDenied(text, verb=verb, resource=resource, namespace=scope)


# The Role rule behind each resource the client touches: (apiGroup, resource, verbs).
_RULES: Final[dict[str, tuple[str, str, tuple[str, ...]]]] = {
    RESOURCE: (api.GROUP, api.PLURAL, SESSION_VERBS),
    "events": ("", "events", ("list",)),
    "nodes": ("", "nodes", ("list",)),
    "pods": ("", "pods", ("list",)),
    POOL_RESOURCE: (api.GROUP, pools.POOL_PLURAL, POOL_VERBS),
    POOL_SCALE_RESOURCE: (api.GROUP, POOL_SCALE_RESOURCE, ("get", "patch")),
}


class _Conflict(Exception):
    """409: AlreadyExists on create, or a failed uid precondition on delete."""


def _items(body: Obj, kind: str) -> Objs:
    """A list's items, each with its apiVersion and kind (a list's items carry neither)."""
    items: Objs = body.get("items") or []
    for item in items:
        item.setdefault("apiVersion", api.API_VERSION)
        item.setdefault("kind", kind)
    return items


def _key(obj: Mapping[str, Any]) -> tuple[str, str]:
    meta = obj.get("metadata") or {}
    return str(meta.get("namespace", "")), str(meta.get("name", ""))


def _rv(obj: Mapping[str, Any]) -> str:
    return str((obj.get("metadata") or {}).get("resourceVersion", ""))


def _event_time(event: Mapping[str, Any]) -> str:
    return str(
        event.get("lastTimestamp")
        or event.get("eventTime")
        or event.get("firstTimestamp")
        or (event.get("metadata") or {}).get("creationTimestamp")
        or ""
    )


# The errors live in `avatar_sdk.errors`; agents catch them here too, as `client.JoinTimeout`.
__all__ = [
    "ADDED",
    "CHART_INSTALL",
    "DELETED",
    "MODIFIED",
    "POOL_RESOURCE",
    "POOL_SCALE_RESOURCE",
    "POOL_VERBS",
    "RESOURCE",
    "SERVICE_ACCOUNT_DIR",
    "SESSION_VERBS",
    "ApiError",
    "ApiUnavailable",
    "AvatarError",
    "AvatarSessionClient",
    "CRDNotInstalled",
    "InvalidPool",
    "InvalidSession",
    "JoinTimeout",
    "NamespaceNotFound",
    "PermissionDenied",
    "PoolNotFound",
    "SessionConflict",
    "SessionDeleted",
    "SessionEvent",
    "SessionFailed",
    "SessionNotFound",
    "SessionWaitError",
    "Unschedulable",
    "describe_conditions",
    "load_api_client",
    "parse_pool",
    "parse_session",
    "permission_denied",
    "unschedulable_message",
]
