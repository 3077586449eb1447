"""The in-memory object store behind the emulated API: etcd, the API server's write path, and
the controllers an operator relies on (garbage collector, namespace and CRD cleanup).

Design:

- **One cluster-wide resourceVersion counter** (`Store.rv`), bumped by every write of any
  object, as etcd's revision is. List responses carry it; watches resume from it.
- **Cost per request independent of history**: objects live in one dict per resource keyed by
  `(namespace, name)`, next to a sorted key list (bisect) for namespace-scoped lists and
  pagination; `uid` and owner→dependents indexes make garbage collection a lookup. Each stored
  `Record` keeps its JSON, so a GET is a dict lookup and a LIST a `b",".join`. A write parses
  the stored JSON back (`json.loads` is the cheapest deep copy), applies the change, admits it,
  and serialises once. Only the watch history is bounded (see `watching.EventLog`).
- **Synchronous**: every method runs to completion on the caller's thread (the aiohttp loop),
  so a write and the fan-out of its event are atomic; nothing here awaits.
- **The write path** mirrors kube-apiserver: system metadata (uid, creationTimestamp,
  generation, deletionTimestamp) is owned by the server; the status subresource is kept apart
  from the main resource; `generation` moves only when something outside metadata (and outside
  status, when status is a subresource) changes; an update that changes nothing is a no-op
  (no new resourceVersion, no event); a stale `metadata.resourceVersion` is 409 Conflict.
- **Deletion**: an object with finalizers only gets `deletionTimestamp`; removing its last
  finalizer deletes it (watchers see DELETED, not a MODIFIED first). Pods on a node run by a
  simulated kubelet (`graceful_nodes`) terminate gracefully: the kubelet stops them, then
  deletes them with grace 0.
- **Controllers** run in `collect_garbage()`: background cascade by ownerReferences (an object
  whose owners are all gone is deleted; dangling references to a gone owner are dropped),
  `Foreground` and `Orphan` propagation, namespace termination (everything inside is deleted,
  then the namespace), and CRD cleanup (its custom resources are deleted, then the resource
  leaves discovery). The API server schedules it right after the write that needs it
  (`on_dirty`), so the cascade happens after the response, as on a real cluster.
"""

from __future__ import annotations

import base64
import binascii
import bisect
import copy
import json
import logging
import random
import uuid
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

from avatar_devtools.localcluster import (
    clock,
    errors,
    patches,
    resources,
    scales,
    selectors,
    validation,
    watching,
)

logger = logging.getLogger(__name__)

Key = tuple[str, str]  # (namespace, name); namespace "" for cluster-scoped objects
Storage = tuple[str, str]  # (group, plural)
Ref = tuple[Storage, str, str]  # storage, namespace, name

DEFAULT_NAMESPACES = ("default", "kube-system", "kube-public", "kube-node-lease")
FOREGROUND_FINALIZER = "foregroundDeletion"
ORPHAN_FINALIZER = "orphan"
TERMINAL_POD_PHASES = frozenset({"Succeeded", "Failed"})
_SYSTEM_METADATA = (
    "uid",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "generation",
    "namespace",
    "name",
)
_GENERATE_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"

MERGE_PATCH = "application/merge-patch+json"
JSON_PATCH = "application/json-patch+json"
STRATEGIC_PATCH = "application/strategic-merge-patch+json"
PATCH_TYPES = (JSON_PATCH, MERGE_PATCH, STRATEGIC_PATCH)

# Aliases for annotations inside `Store`, whose `list` method hides the builtin there.
Records = list[watching.Record]
Watchers = list[watching.Watcher]
Causes = list[errors.StatusCause]
Obj = dict[str, Any]
Strings = list[str]


class ListResult(NamedTuple):
    records: Records
    rv: int
    continue_token: str | None


class Store:
    """All objects of the emulated cluster, and every write to them."""

    def __init__(
        self,
        *,
        history: int = 4096,
        max_pending: int = 100_000,
        strict_crd_schemas: bool = True,
    ) -> None:
        self.resources = resources.ResourceRegistry()
        # False: a CRD whose schema a real API server refuses as non-structural is accepted
        # with a warning (an escape hatch while the CRD is being fixed; never the default).
        self.strict_crd_schemas = strict_crd_schemas
        self.rv = 0
        self.history = history
        self.max_pending = max_pending
        # Nodes whose pods a simulated kubelet runs: deleting such a pod is graceful.
        self.graceful_nodes: set[str] = set()
        # Called when controllers have work to do; the API server schedules collect_garbage().
        self.on_dirty: Callable[[], None] | None = None
        self._objects: dict[Storage, dict[Key, watching.Record]] = {}
        self._keys: dict[Storage, list[Key]] = {}
        # label (key, value) → namespace → keys of the objects that carry it, so that a list
        # with an equality selector costs O(matches in the namespace), not O(namespace).
        self._labels: dict[Storage, dict[tuple[str, str], dict[str, set[Key]]]] = {}
        self._logs: dict[Storage, watching.EventLog] = {}
        self._watchers: dict[Storage, set[watching.Watcher]] = {}
        self._listeners: dict[Storage, list[Callable[[watching.WatchEvent], None]]] = {}
        self._by_uid: dict[str, Ref] = {}
        self._dependents: dict[str, set[Ref]] = {}
        self._gc_removed: list[str] = []
        self._gc_check: set[Ref] = set()
        self._gc_finalize: set[Ref] = set()
        for info in resources.BUILTINS:
            self._ensure_storage(info.storage)
        for name in DEFAULT_NAMESPACES:
            self.create(resources.NAMESPACES, None, {"metadata": {"name": name}})
        self.collect_garbage()

    # --- reading --------------------------------------------------------------------------

    def _ensure_storage(self, storage: Storage) -> None:
        if storage not in self._objects:
            self._objects[storage] = {}
            self._keys[storage] = []
            self._labels[storage] = {}
            self._logs[storage] = watching.EventLog(self.history)
            self._watchers[storage] = set()
            self._listeners.setdefault(storage, [])

    def lookup(self, group: str, version: str, plural: str) -> resources.ResourceInfo:
        info = self.resources.get(group, version, plural)
        if info is None:
            raise errors.no_such_path()
        return info

    def find(
        self, info: resources.ResourceInfo, namespace: str | None, name: str
    ) -> watching.Record | None:
        return self._objects.get(info.storage, {}).get((namespace or "", name))

    def get(
        self, info: resources.ResourceInfo, namespace: str | None, name: str
    ) -> watching.Record:
        record = self.find(info, namespace, name)
        if record is None:
            raise errors.not_found(info.plural, info.group, name)
        return record

    def count(self, info: resources.ResourceInfo) -> int:
        return len(self._objects.get(info.storage, {}))

    def _scope(
        self, storage: Storage, namespace: str | None, start: Key | None = None
    ) -> Iterator[Key]:
        keys = self._keys.get(storage, [])
        if start is not None:
            index = bisect.bisect_right(keys, start)
        elif namespace is not None:
            index = bisect.bisect_left(keys, (namespace, ""))
        else:
            index = 0
        for i in range(index, len(keys)):
            key = keys[i]
            if namespace is not None and key[0] != namespace:
                return
            yield key

    def list(
        self,
        info: resources.ResourceInfo,
        namespace: str | None,
        *,
        labels: selectors.LabelSelector = selectors.EVERYTHING_LABELS,
        fields: selectors.FieldSelector = selectors.EVERYTHING_FIELDS,
        limit: int | None = None,
        continue_token: str | None = None,
    ) -> ListResult:
        list_rv = self.rv
        start: Key | None = None
        if continue_token:
            list_rv, start = _decode_continue(continue_token)
        objects = self._objects.get(info.storage, {})
        by_labels, by_fields = not labels.empty, not fields.empty
        found: list[watching.Record] = []
        last: Key | None = None
        for key in self._candidates(info.storage, namespace, start, labels):
            record = objects[key]
            if by_labels and not labels.matches(record.obj["metadata"].get("labels")):
                continue
            if by_fields and not fields.matches(record.obj):
                continue
            if limit and len(found) >= limit:
                return ListResult(found, list_rv, _encode_continue(list_rv, last))
            found.append(record)
            last = key
        return ListResult(found, list_rv, None)

    def _candidates(
        self,
        storage: Storage,
        namespace: str | None,
        start: Key | None,
        labels: selectors.LabelSelector,
    ) -> Iterator[Key]:
        """Keys in scope, in order; only those with the selector's rarest label if it has one."""
        if not labels.equalities:
            yield from self._scope(storage, namespace, start)
            return
        index = self._labels.get(storage, {})
        holders: list[set[Key]] = []
        for pair in labels.equalities:
            by_namespace = index.get(pair, {})
            if namespace is not None:
                holders.append(by_namespace.get(namespace, set()))
            else:
                holders.append(set().union(*by_namespace.values()))
        rarest = min(holders, key=len)
        yield from sorted(rarest if start is None else (k for k in rarest if k > start))

    # --- watching -------------------------------------------------------------------------

    def watch(
        self,
        info: resources.ResourceInfo,
        namespace: str | None,
        *,
        since: str | None,
        labels: selectors.LabelSelector,
        fields: selectors.FieldSelector,
        notify: Callable[[], None],
        initial_events_end: bool = False,
    ) -> watching.Watcher:
        """Open a watch; its first lines are queued already (replay, or the initial state)."""
        watcher = watching.Watcher(
            storage=info.storage,
            api_version=info.api_version,
            namespace=namespace,
            labels=labels,
            fields=fields,
            max_pending=self.max_pending,
            notify=notify,
        )
        if since not in (None, "", "0"):
            try:
                rv = int(str(since))
            except ValueError:
                raise errors.bad_request(f"invalid resource version: {since!r}") from None
            events = self._logs[info.storage].since(rv)
            if events is None:
                compacted = self._logs[info.storage].compacted_rv
                raise errors.gone(f"too old resource version: {rv} ({compacted})")
            for event in events:
                watcher.offer(event)
        else:
            for record in self.list(info, namespace, labels=labels, fields=fields).records:
                watcher.pending.append(
                    watching.event_line(watching.ADDED, record.projected(info.api_version))
                )
            if initial_events_end:
                watcher.pending.append(self.bookmark(info, initial_events_end=True))
        self._watchers[info.storage].add(watcher)
        return watcher

    def unwatch(self, watcher: watching.Watcher) -> None:
        self._watchers.get(watcher.storage, set()).discard(watcher)

    def watchers(self, info: resources.ResourceInfo | None = None) -> Watchers:
        if info is None:
            return [w for group in self._watchers.values() for w in group]
        return list(self._watchers.get(info.storage, ()))

    def bookmark(self, info: resources.ResourceInfo, *, initial_events_end: bool = False) -> bytes:
        meta: dict[str, Any] = {"resourceVersion": str(self.rv)}
        if initial_events_end:
            meta["annotations"] = {"k8s.io/initial-events-end": "true"}
        body = {"kind": info.kind, "apiVersion": info.api_version, "metadata": meta}
        return watching.event_line(
            watching.BOOKMARK, json.dumps(body, separators=(",", ":")).encode()
        )

    def add_listener(
        self, info: resources.ResourceInfo, listener: Callable[[watching.WatchEvent], None]
    ) -> None:
        """In-process subscription (the simulated kubelet): called synchronously per event."""
        self._listeners.setdefault(info.storage, []).append(listener)

    def remove_listener(
        self, info: resources.ResourceInfo, listener: Callable[[watching.WatchEvent], None]
    ) -> None:
        listeners = self._listeners.get(info.storage, [])
        if listener in listeners:
            listeners.remove(listener)

    def compact(self, info: resources.ResourceInfo | None = None) -> None:
        """Forget the watch history (of one resource, or all), as an etcd compaction does."""
        logs = [self._logs[info.storage]] if info else list(self._logs.values())
        for log in logs:
            log.compact(self.rv)

    # --- committing -----------------------------------------------------------------------

    def _commit(
        self,
        info: resources.ResourceInfo,
        obj: dict[str, Any],
        kind: str,
        old: watching.Record | None,
    ) -> watching.Record:
        storage = info.storage
        self.rv += 1
        meta = obj["metadata"]
        meta["resourceVersion"] = str(self.rv)
        record = watching.Record(obj, json.dumps(obj, separators=(",", ":")).encode(), self.rv)
        key = (str(meta.get("namespace") or ""), str(meta["name"]))
        ref: Ref = (storage, key[0], key[1])
        collection = self._objects[storage]
        old_owners = _owner_uids(old.obj) if old else set()
        self._index_labels(
            storage, key, old.obj if old else None, None if kind == watching.DELETED else obj
        )
        if kind == watching.DELETED:
            del collection[key]
            keys = self._keys[storage]
            del keys[bisect.bisect_left(keys, key)]
            self._by_uid.pop(meta["uid"], None)
            for owner in old_owners:
                self._unlink(owner, ref)
                owner_ref = self._by_uid.get(owner)
                if owner_ref is not None:
                    self._gc_finalize.add(owner_ref)  # a foreground deletion may be waiting
            self._gc_removed.append(meta["uid"])
            self._after_removal(info, record)
        else:
            if old is None:
                bisect.insort(self._keys[storage], key)
                self._by_uid[meta["uid"]] = ref
            collection[key] = record
            new_owners = _owner_uids(obj)
            for owner in old_owners - new_owners:
                self._unlink(owner, ref)
            for owner in new_owners - old_owners:
                self._dependents.setdefault(owner, set()).add(ref)
            if new_owners - old_owners:
                self._gc_check.add(ref)
            if meta.get("deletionTimestamp"):
                self._gc_finalize.add(ref)
        event = watching.WatchEvent(kind, record, old)
        self._logs[storage].append(event)
        for watcher in list(self._watchers[storage]):
            watcher.offer(event)
        for listener in list(self._listeners.get(storage, ())):
            listener(event)
        if self._gc_removed or self._gc_check or self._gc_finalize:
            self._dirty()
        return record

    def _index_labels(
        self,
        storage: Storage,
        key: Key,
        old: dict[str, Any] | None,
        new: dict[str, Any] | None,
    ) -> None:
        before = (old["metadata"].get("labels") or {}) if old else {}
        after = (new["metadata"].get("labels") or {}) if new else {}
        if before == after:
            return
        index = self._labels[storage]
        namespace = key[0]
        for pair in before.items():
            if after.get(pair[0]) != pair[1]:
                by_namespace = index.get(pair, {})
                holders = by_namespace.get(namespace)
                if holders is not None:
                    holders.discard(key)
                    if not holders:
                        del by_namespace[namespace]
                        if not by_namespace:
                            del index[pair]
        for pair in after.items():
            if before.get(pair[0]) != pair[1]:
                index.setdefault(pair, {}).setdefault(namespace, set()).add(key)

    def _unlink(self, owner: str, ref: Ref) -> None:
        dependents = self._dependents.get(owner)
        if dependents is not None:
            dependents.discard(ref)
            if not dependents:
                del self._dependents[owner]

    def _dirty(self) -> None:
        if self.on_dirty is not None:
            self.on_dirty()

    def _after_removal(self, info: resources.ResourceInfo, record: watching.Record) -> None:
        namespace = record.namespace
        if namespace:
            ns_record = self.find(resources.NAMESPACES, None, namespace)
            if ns_record is not None and ns_record.obj["metadata"].get("deletionTimestamp"):
                self._gc_finalize.add((resources.NAMESPACES.storage, "", namespace))
        if info.custom:
            crd_name = f"{info.plural}.{info.group}"
            crd = self.find(resources.CRDS, None, crd_name)
            if crd is not None and crd.obj["metadata"].get("deletionTimestamp"):
                self._gc_finalize.add((resources.CRDS.storage, "", crd_name))
        if info.storage == resources.CRDS.storage:
            spec = record.obj["spec"]
            storage = (spec["group"], spec["names"]["plural"])
            self.resources.unregister(storage)
            for watcher in list(self._watchers.get(storage, ())):
                watcher.close("the resource is no longer served")
            logger.info("crd removed", extra={"crd": record.name})

    # --- creating -------------------------------------------------------------------------

    def create(
        self,
        info: resources.ResourceInfo,
        namespace: str | None,
        body: Any,
        *,
        dry_run: bool = False,
    ) -> watching.Record:
        if not isinstance(body, dict):
            raise errors.bad_request("the body of a create must be a JSON object")
        obj = body
        self._check_type(info, obj)
        meta = obj.get("metadata")
        if meta is None:
            meta = obj["metadata"] = {}
        if not isinstance(meta, dict):
            raise errors.bad_request("metadata must be an object")
        if info.namespaced:
            body_ns = meta.get("namespace")
            namespace = namespace or body_ns or "default"
            if body_ns and body_ns != namespace:
                raise errors.bad_request(
                    "the namespace of the provided object does not match the namespace sent "
                    "on the request"
                )
            meta["namespace"] = namespace
        else:
            meta.pop("namespace", None)
            namespace = None
        if meta.get("resourceVersion"):
            raise errors.bad_request("resourceVersion should not be set on objects to be created")
        for field in (
            "uid",
            "creationTimestamp",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "generation",
            "selfLink",
            "managedFields",
        ):
            meta.pop(field, None)
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = self._generate_name(info, namespace, str(meta["generateName"]))
        if info.status_subresource and info.storage != resources.NODES.storage:
            obj.pop("status", None)
        schema_causes: list[errors.StatusCause] = []
        if info.custom:
            assert info.schema is not None
            self._check_crd_serving(info)
            schema_causes = info.schema.admit(obj)
            if info.scale is not None:
                schema_causes += scales.validate_spec(info.scale, obj)
                schema_causes += scales.validate_status(info.scale, obj)
        # metadata first, then the schema and its CEL rules: kube-apiserver's order
        causes = validation.prepare(info, obj, None) + schema_causes
        name = str(meta.get("name") or "")
        causes = self._lenient(info, name, causes)
        if causes:
            raise errors.invalid(info.kind, info.group, name, causes)
        if namespace is not None:
            self._check_namespace_open(info, namespace, name)
        if self.find(info, namespace, name) is not None:
            raise errors.already_exists(info.plural, info.group, name)
        meta["uid"] = str(uuid.uuid4())
        meta["creationTimestamp"] = clock.timestamp()
        if info.has_generation:
            meta["generation"] = 1
        if dry_run:
            meta["resourceVersion"] = str(self.rv)
            return watching.Record(obj, json.dumps(obj).encode(), self.rv)
        record = self._commit(info, obj, watching.ADDED, None)
        self._after_create(info, record)
        return record

    def _check_type(self, info: resources.ResourceInfo, obj: dict[str, Any]) -> None:
        api_version = obj.get("apiVersion") or info.api_version
        kind = obj.get("kind") or info.kind
        if api_version != info.api_version:
            raise errors.bad_request(
                f"the API version in the data ({api_version}) does not match the expected "
                f"API version ({info.api_version})"
            )
        if kind != info.kind:
            raise errors.bad_request(
                f"the kind in the data ({kind}) does not match the expected kind ({info.kind})"
            )
        storage_version = self.resources.storage_version(info.storage) or info.version
        obj["apiVersion"] = f"{info.group}/{storage_version}" if info.group else storage_version
        obj["kind"] = kind

    def _lenient(self, info: resources.ResourceInfo, name: str, causes: Causes) -> Causes:
        """Drop a CRD's schema complaints (with a warning) when not strict about them."""
        if self.strict_crd_schemas or info.storage != resources.CRDS.storage:
            return causes
        schema_causes = [c for c in causes if ".schema.openAPIV3Schema" in c.get("field", "")]
        for cause in schema_causes:
            logger.warning(
                "crd schema accepted leniently, a real api server refuses it",
                extra={"crd": name, "field": cause.get("field"), "why": cause["message"]},
            )
        return [c for c in causes if c not in schema_causes]

    def _check_crd_serving(self, info: resources.ResourceInfo) -> None:
        crd = self.find(resources.CRDS, None, f"{info.plural}.{info.group}")
        if crd is not None and crd.obj["metadata"].get("deletionTimestamp"):
            raise errors.method_not_allowed(
                "create not allowed while custom resource definition is terminating"
            )

    def _check_namespace_open(
        self, info: resources.ResourceInfo, namespace: str, name: str
    ) -> None:
        ns = self.find(resources.NAMESPACES, None, namespace)
        if ns is None:
            raise errors.not_found("namespaces", "", namespace)
        if ns.obj["metadata"].get("deletionTimestamp"):
            raise errors.forbidden_request(
                info.plural,
                info.group,
                name,
                f"unable to create new content in namespace {namespace} because it is being "
                "terminated",
            )

    def _generate_name(
        self, info: resources.ResourceInfo, namespace: str | None, prefix: str
    ) -> str:
        for _ in range(16):
            suffix = "".join(random.choices(_GENERATE_ALPHABET, k=5))
            name = f"{prefix[:58]}{suffix}"
            if self.find(info, namespace, name) is None:
                return name
        raise errors.internal("could not generate a unique name")

    def _after_create(self, info: resources.ResourceInfo, record: watching.Record) -> None:
        if info.storage == resources.CRDS.storage:
            infos = self.resources.register_crd(record.obj)
            for served in infos:
                self._ensure_storage(served.storage)
            logger.info("crd registered", extra={"crd": record.name})
        elif info.storage == resources.NAMESPACES.storage:
            self.create(resources.SERVICEACCOUNTS, record.name, {"metadata": {"name": "default"}})

    # --- updating -------------------------------------------------------------------------

    def update(
        self,
        info: resources.ResourceInfo,
        namespace: str | None,
        name: str,
        body: Any,
        *,
        subresource: str | None = None,
        dry_run: bool = False,
    ) -> watching.Record:
        old = self.get(info, namespace, name)
        if not isinstance(body, dict) or not isinstance(body.get("metadata", {}), dict):
            raise errors.bad_request("the body of an update must be a JSON object")
        meta = body.setdefault("metadata", {})
        if meta.get("name") and meta["name"] != name:
            raise errors.bad_request(
                f"the name of the object ({meta['name']}) does not match the name on the URL "
                f"({name})"
            )
        if namespace and meta.get("namespace") and meta["namespace"] != namespace:
            raise errors.bad_request(
                "the namespace of the provided object does not match the namespace sent on the "
                "request"
            )
        self._check_precondition(info, old, meta.get("resourceVersion"))
        self._check_type(info, body)
        return self._admit_update(info, old, body, subresource=subresource, dry_run=dry_run)

    def patch(
        self,
        info: resources.ResourceInfo,
        namespace: str | None,
        name: str,
        patch_type: str,
        patch: Any,
        *,
        subresource: str | None = None,
        dry_run: bool = False,
    ) -> watching.Record:
        old = self.get(info, namespace, name)
        base = json.loads(old.raw)
        if patch_type == JSON_PATCH:
            new = patches.json_patch(base, patch)
            if isinstance(new, dict):
                rv = (new.get("metadata") or {}).get("resourceVersion")
                self._check_precondition(info, old, rv)
        elif patch_type in (MERGE_PATCH, STRATEGIC_PATCH):
            if not isinstance(patch, dict):
                raise errors.bad_request("a merge patch of an object must be a JSON object")
            meta_patch = patch.get("metadata")
            if isinstance(meta_patch, dict):
                self._check_precondition(info, old, meta_patch.get("resourceVersion"))
            if patch_type == STRATEGIC_PATCH:
                new = patches.strategic_merge_patch(base, patch)
            else:
                new = patches.merge_patch(base, patch)
        else:
            raise errors.unsupported_media_type(patch_type, list(PATCH_TYPES))
        if not isinstance(new, dict) or not isinstance(new.get("metadata"), dict):
            raise errors.unprocessable("the patched object must be an object with metadata")
        new["metadata"]["resourceVersion"] = old.obj["metadata"]["resourceVersion"]
        return self._admit_update(info, old, new, subresource=subresource, dry_run=dry_run)

    def mutate(
        self,
        info: resources.ResourceInfo,
        namespace: str | None,
        name: str,
        change: Callable[[dict[str, Any]], None],
        *,
        subresource: str | None = None,
    ) -> watching.Record:
        """In-process read-modify-write of the freshest object (the simulated kubelet's path)."""
        old = self.get(info, namespace, name)
        new = json.loads(old.raw)
        change(new)
        return self._admit_update(info, old, new, subresource=subresource, dry_run=False)

    def _check_precondition(
        self, info: resources.ResourceInfo, old: watching.Record, rv: object
    ) -> None:
        if rv not in (None, "") and str(rv) != old.obj["metadata"]["resourceVersion"]:
            raise errors.conflict(info.plural, info.group, old.name)

    def _admit_update(
        self,
        info: resources.ResourceInfo,
        old: watching.Record,
        new: dict[str, Any],
        *,
        subresource: str | None,
        dry_run: bool,
    ) -> watching.Record:
        old_obj = old.obj
        if subresource == "status":
            # Only the status may change here; the rest comes back from the stored object
            # (re-parsed only when the write touched it: comparing is cheaper than parsing).
            if any(
                new.get(k) != old_obj.get(k) for k in new.keys() | old_obj.keys() if k != "status"
            ):
                status = new.get("status")
                new = json.loads(old.raw)
                if status is None:
                    new.pop("status", None)
                else:
                    new["status"] = status
        elif subresource is not None:
            raise errors.method_not_allowed()
        elif info.status_subresource and new.get("status") != old_obj.get("status"):
            if "status" in old_obj:
                new["status"] = copy.deepcopy(old_obj["status"])
            else:
                new.pop("status", None)
        meta = new["metadata"]
        old_meta = old_obj["metadata"]
        for field in _SYSTEM_METADATA:
            if field in old_meta:
                meta[field] = old_meta[field]
            else:
                meta.pop(field, None)
        meta.pop("selfLink", None)
        meta.pop("managedFields", None)
        new["apiVersion"] = old_obj["apiVersion"]
        new["kind"] = old_obj["kind"]
        deleting = bool(old_meta.get("deletionTimestamp"))
        if deleting:
            added = set(meta.get("finalizers") or []) - set(old_meta.get("finalizers") or [])
            if added:
                raise errors.invalid(
                    info.kind,
                    info.group,
                    old.name,
                    [
                        errors.forbidden(
                            "metadata.finalizers",
                            "no new finalizers can be added if the object is being deleted, found "
                            f"new finalizers {sorted(added)!r}",
                        )
                    ],
                )
        changed = {
            k
            for k in set(new) | set(old_obj)
            if k not in ("metadata", "apiVersion", "kind") and new.get(k) != old_obj.get(k)
        }
        schema_causes: list[errors.StatusCause] = []
        if info.custom and changed:
            assert info.schema is not None
            schema_causes = info.schema.admit(new, changed, old_obj)
        if info.scale is not None:
            # kube-apiserver's ValidateScaleSpec (not on a status write) and ValidateScaleStatus
            if subresource != "status":
                schema_causes += scales.validate_spec(info.scale, new)
            schema_causes += scales.validate_status(info.scale, new)
        causes = validation.prepare(info, new, old_obj, meta_changed=meta != old_meta)
        causes += schema_causes
        causes = self._lenient(info, old.name, causes)
        if causes:
            raise errors.invalid(info.kind, info.group, old.name, causes)
        if info.has_generation and any(
            new.get(k) != old_obj.get(k)
            for k in changed
            if not (k == "status" and info.status_subresource)
        ):
            meta["generation"] = int(old_meta.get("generation") or 1) + 1
        meta["resourceVersion"] = old_meta["resourceVersion"]
        if new == old_obj:
            return old
        if dry_run:
            return watching.Record(new, json.dumps(new).encode(), old.rv)
        if (
            deleting
            and not meta.get("finalizers")
            and not meta.get("deletionGracePeriodSeconds")
            and not _namespace_finalizers(info, new)
        ):
            return self._commit(info, new, watching.DELETED, old)
        record = self._commit(info, new, watching.MODIFIED, old)
        if info.storage == resources.CRDS.storage and not deleting:
            for served in self.resources.register_crd(record.obj):
                self._ensure_storage(served.storage)
        return record

    # --- the scale subresource of custom resources (see `scales`) ------------------------

    def _scale_paths(self, info: resources.ResourceInfo) -> scales.ScalePaths:
        if info.scale is None:
            raise errors.no_such_path()
        return info.scale

    def scale(self, info: resources.ResourceInfo, namespace: str | None, name: str) -> Obj:
        """GET .../NAME/scale: the object as an autoscaling/v1 Scale."""
        paths = self._scale_paths(info)
        return scales.scale_of(paths, self.get(info, namespace, name).obj)

    def patch_scale(
        self,
        info: resources.ResourceInfo,
        namespace: str | None,
        name: str,
        patch_type: str,
        patch: Any,
        *,
        dry_run: bool = False,
        field_validation: str = "Warn",
        warnings: Strings | None = None,
    ) -> Obj:
        """PATCH .../NAME/scale: the patch applies to the Scale, whose spec.replicas is then
        written to the object; answers the Scale of the object written. Fields the patched
        Scale does not have are refused (`Strict`: 422, as a Scale that does not decode),
        else dropped, with a warning each unless `Ignore`."""
        paths = self._scale_paths(info)
        old = self.get(info, namespace, name)
        base = scales.scale_of(paths, old.obj, to_write=True)
        if patch_type == JSON_PATCH:
            new = patches.json_patch(base, patch)
        elif patch_type in (MERGE_PATCH, STRATEGIC_PATCH):
            if not isinstance(patch, dict):
                raise errors.bad_request("a merge patch of an object must be a JSON object")
            if patch_type == STRATEGIC_PATCH:
                new = patches.strategic_merge_patch(base, patch)
            else:
                new = patches.merge_patch(base, patch)
        else:
            raise errors.unsupported_media_type(patch_type, list(PATCH_TYPES))
        if not isinstance(new, dict):
            raise errors.unprocessable("the patched object must be an object with metadata")
        if field_validation != "Ignore":
            unknown = scales.unknown_fields(new)
            if unknown and field_validation == "Strict":
                why = "strict decoding error: " + ", ".join(
                    f'unknown field "{path}"' for path in unknown
                )
                raise scales.patch_invalid(new, why)
            if warnings is not None:
                warnings.extend(f'unknown field "{path}"' for path in unknown)
        return self._write_scale(info, paths, old, new, patched=True, dry_run=dry_run)

    def update_scale(
        self,
        info: resources.ResourceInfo,
        namespace: str | None,
        name: str,
        body: Any,
        *,
        dry_run: bool = False,
    ) -> Obj:
        """PUT .../NAME/scale: the Scale's spec.replicas written to the object, with its
        metadata.resourceVersion (when set) as the precondition."""
        paths = self._scale_paths(info)
        old = self.get(info, namespace, name)
        if not isinstance(body, dict):
            raise errors.bad_request("the body of an update must be a JSON object")
        api_version = body.get("apiVersion") or scales.API_VERSION
        kind = body.get("kind") or scales.KIND
        if (api_version, kind) != (scales.API_VERSION, scales.KIND):
            raise errors.bad_request(
                f"the API version in the data ({api_version}) and kind ({kind}) do not match "
                f"the expected {scales.API_VERSION}, Kind={scales.KIND}"
            )
        return self._write_scale(info, paths, old, body, patched=False, dry_run=dry_run)

    def _write_scale(
        self,
        info: resources.ResourceInfo,
        paths: scales.ScalePaths,
        old: watching.Record,
        scale: Obj,
        *,
        patched: bool,
        dry_run: bool,
    ) -> Obj:
        meta = scale.get("metadata") or {}
        if not isinstance(meta, dict):
            raise errors.bad_request("metadata must be an object")
        if meta.get("name") and meta["name"] != old.name:
            raise errors.bad_request(
                f"the name of the object ({meta['name']}) does not match the name on the URL "
                f"({old.name})"
            )
        namespace = old.namespace
        if namespace and meta.get("namespace") and meta["namespace"] != namespace:
            raise errors.bad_request(
                "the namespace of the provided object does not match the namespace sent on the "
                "request"
            )
        replicas = scales.replicas_of(scale, patched=patched)
        if replicas == scales.UNSET_REPLICAS:
            raise errors.bad_request(
                f'the spec replicas field "{paths.spec_replicas}" cannot be empty'
            )
        self._check_precondition(info, old, meta.get("resourceVersion"))
        new = json.loads(old.raw)
        scales.set_replicas(new, paths.spec_replicas, replicas)
        record = self._admit_update(info, old, new, subresource=None, dry_run=dry_run)
        return scales.scale_of(paths, record.obj)

    def bind(self, namespace: str, name: str, node: str) -> watching.Record:
        """pods/binding: assign a pending pod to a node (the scheduler's one write)."""
        info = resources.PODS
        old = self.get(info, namespace, name)
        current = (old.obj.get("spec") or {}).get("nodeName")
        if current:
            raise errors.conflict(
                "pods", "", name, f'pod {name} is already assigned to node "{current}"'
            )
        new = json.loads(old.raw)
        new["spec"]["nodeName"] = node
        conditions = [
            c
            for c in (new.get("status") or {}).get("conditions") or []
            if c.get("type") != "PodScheduled"
        ]
        conditions.append(
            {
                "type": "PodScheduled",
                "status": "True",
                "lastProbeTime": None,
                "lastTransitionTime": clock.timestamp(),
            }
        )
        new.setdefault("status", {})["conditions"] = conditions
        return self._commit(info, new, watching.MODIFIED, old)

    # --- deleting -------------------------------------------------------------------------

    def delete(
        self,
        info: resources.ResourceInfo,
        namespace: str | None,
        name: str,
        *,
        propagation: str | None = None,
        grace_period: int | None = None,
        preconditions: dict[str, Any] | None = None,
        dry_run: bool = False,
    ) -> watching.Record:
        old = self.get(info, namespace, name)
        old_meta = old.obj["metadata"]
        preconditions = preconditions or {}
        if preconditions.get("uid") and preconditions["uid"] != old_meta["uid"]:
            raise errors.conflict(
                info.plural,
                info.group,
                name,
                f"Precondition failed: UID in precondition: {preconditions['uid']}, "
                f"UID in object meta: {old_meta['uid']}",
            )
        if (
            preconditions.get("resourceVersion")
            and str(preconditions["resourceVersion"]) != old_meta["resourceVersion"]
        ):
            raise errors.conflict(
                info.plural,
                info.group,
                name,
                f"Precondition failed: ResourceVersion in precondition: "
                f"{preconditions['resourceVersion']}, ResourceVersion in object meta: "
                f"{old_meta['resourceVersion']}",
            )
        if propagation not in (None, "Background", "Foreground", "Orphan"):
            raise errors.bad_request(f"unsupported propagationPolicy: {propagation!r}")
        new = json.loads(old.raw)
        meta = new["metadata"]
        finalizers = list(meta.get("finalizers") or [])
        has_dependents = bool(self._dependents.get(old_meta["uid"]))
        if (
            propagation == "Foreground"
            and has_dependents
            and FOREGROUND_FINALIZER not in finalizers
        ):
            finalizers.append(FOREGROUND_FINALIZER)
        if propagation == "Orphan" and has_dependents and ORPHAN_FINALIZER not in finalizers:
            finalizers.append(ORPHAN_FINALIZER)
        graceful = self._graceful_pod(info, old.obj, grace_period)
        blocked = bool(finalizers) or graceful or bool(_namespace_finalizers(info, new))
        if dry_run:
            return old
        if not blocked:
            return self._commit(info, new, watching.DELETED, old)
        if old_meta.get("deletionTimestamp") and finalizers == list(
            old_meta.get("finalizers") or []
        ):
            if info.storage == resources.PODS.storage and grace_period == 0 and not finalizers:
                return self._commit(info, new, watching.DELETED, old)
            return old
        meta["finalizers"] = finalizers
        if not old_meta.get("deletionTimestamp"):
            meta["deletionTimestamp"] = clock.timestamp()
            if graceful:
                grace = grace_period
                if grace is None:
                    grace = int(
                        (old.obj.get("spec") or {}).get("terminationGracePeriodSeconds", 30)
                    )
                meta["deletionGracePeriodSeconds"] = grace
            else:
                meta["deletionGracePeriodSeconds"] = 0
        if info.storage == resources.NAMESPACES.storage:
            new.setdefault("status", {})["phase"] = "Terminating"
        return self._commit(info, new, watching.MODIFIED, old)

    def _graceful_pod(
        self, info: resources.ResourceInfo, obj: dict[str, Any], grace: int | None
    ) -> bool:
        if info.storage != resources.PODS.storage or grace == 0:
            return False
        node = (obj.get("spec") or {}).get("nodeName")
        phase = (obj.get("status") or {}).get("phase")
        return bool(node) and node in self.graceful_nodes and phase not in TERMINAL_POD_PHASES

    def delete_collection(
        self,
        info: resources.ResourceInfo,
        namespace: str | None,
        *,
        labels: selectors.LabelSelector,
        fields: selectors.FieldSelector,
        propagation: str | None = None,
        grace_period: int | None = None,
        dry_run: bool = False,
    ) -> Records:
        deleted = []
        for record in self.list(info, namespace, labels=labels, fields=fields).records:
            deleted.append(
                self.delete(
                    info,
                    record.namespace or None,
                    record.name,
                    propagation=propagation,
                    grace_period=grace_period,
                    dry_run=dry_run,
                )
            )
        return deleted

    # --- controllers ----------------------------------------------------------------------

    def collect_garbage(self) -> int:
        """Run the garbage collector, namespace and CRD controllers until they are idle."""
        actions = 0
        for _ in range(100_000):
            if self._gc_removed:
                removed, self._gc_removed = self._gc_removed, []
                for uid in removed:
                    self._gc_check.update(self._dependents.pop(uid, ()))
            elif self._gc_check:
                actions += self._check_dependent(self._gc_check.pop())
            elif self._gc_finalize:
                actions += self._finalize(self._gc_finalize.pop())
            else:
                break
        return actions

    def _info_for(self, storage: Storage) -> resources.ResourceInfo | None:
        version = self.resources.storage_version(storage)
        return self.resources.get(storage[0], version, storage[1]) if version else None

    def _record_of(self, ref: Ref) -> tuple[resources.ResourceInfo, watching.Record] | None:
        info = self._info_for(ref[0])
        if info is None:
            return None
        record = self._objects.get(ref[0], {}).get((ref[1], ref[2]))
        return (info, record) if record is not None else None

    def _check_dependent(self, ref: Ref) -> int:
        found = self._record_of(ref)
        if found is None:
            return 0
        info, record = found
        refs = record.obj["metadata"].get("ownerReferences") or []
        if not refs:
            return 0
        alive = [r for r in refs if r.get("uid") in self._by_uid]
        if not alive:
            if record.obj["metadata"].get("deletionTimestamp"):
                return 0
            logger.debug("garbage collecting", extra={"resource": info.name, "object": record.name})
            self._delete_quietly(info, record)
            return 1
        if len(alive) < len(refs):
            new = json.loads(record.raw)
            new["metadata"]["ownerReferences"] = alive
            self._commit(info, new, watching.MODIFIED, record)
            return 1
        return 0

    def _delete_quietly(
        self, info: resources.ResourceInfo, record: watching.Record, **kwargs: Any
    ) -> None:
        try:
            self.delete(info, record.namespace or None, record.name, **kwargs)
        except errors.ApiError as e:
            logger.debug(
                "controller delete failed", extra={"object": record.name, "error": e.message}
            )

    def _finalize(self, ref: Ref) -> int:
        found = self._record_of(ref)
        if found is None:
            return 0
        info, record = found
        meta = record.obj["metadata"]
        if not meta.get("deletionTimestamp"):
            return 0
        finalizers = list(meta.get("finalizers") or [])
        uid = meta["uid"]
        actions = 0
        if FOREGROUND_FINALIZER in finalizers:
            dependents = [self._record_of(d) for d in list(self._dependents.get(uid, ()))]
            pending = [d for d in dependents if d is not None]
            for dep_info, dep_record in pending:
                if not dep_record.obj["metadata"].get("deletionTimestamp"):
                    self._delete_quietly(dep_info, dep_record, propagation="Foreground")
                    actions += 1
            if not any(self._record_of(d) for d in list(self._dependents.get(uid, ()))):
                actions += self._drop_finalizer(info, ref, FOREGROUND_FINALIZER)
        elif ORPHAN_FINALIZER in finalizers:
            for dep_ref in list(self._dependents.get(uid, ())):
                found_dep = self._record_of(dep_ref)
                if found_dep is None:
                    continue
                dep_info, dep_record = found_dep
                new = json.loads(dep_record.raw)
                new["metadata"]["ownerReferences"] = [
                    r for r in new["metadata"].get("ownerReferences") or [] if r.get("uid") != uid
                ]
                self._commit(dep_info, new, watching.MODIFIED, dep_record)
                actions += 1
            actions += self._drop_finalizer(info, ref, ORPHAN_FINALIZER)
        elif (
            info.storage == resources.CRDS.storage
            and validation.CRD_CLEANUP_FINALIZER in finalizers
        ):
            actions += self._cleanup_crd(ref, record)
        elif info.storage == resources.NAMESPACES.storage and _namespace_finalizers(
            info, record.obj
        ):
            actions += self._cleanup_namespace(ref, record)
        return actions

    def _drop_finalizer(self, info: resources.ResourceInfo, ref: Ref, finalizer: str) -> int:
        found = self._record_of(ref)
        if found is None:
            return 0
        _, record = found
        new = json.loads(record.raw)
        meta = new["metadata"]
        meta["finalizers"] = [f for f in meta.get("finalizers") or [] if f != finalizer]
        if not meta["finalizers"]:
            del meta["finalizers"]
        if not meta.get("finalizers") and not _namespace_finalizers(info, new):
            self._commit(info, new, watching.DELETED, record)
        else:
            self._commit(info, new, watching.MODIFIED, record)
        return 1

    def _cleanup_crd(self, ref: Ref, record: watching.Record) -> int:
        spec = record.obj["spec"]
        storage = (spec["group"], spec["names"]["plural"])
        info = self._info_for(storage)
        remaining = list(self._objects.get(storage, {}).values())
        actions = 0
        if info is not None:
            for item in remaining:
                if not item.obj["metadata"].get("deletionTimestamp"):
                    self._delete_quietly(info, item)
                    actions += 1
        if not self._objects.get(storage):
            actions += self._drop_finalizer(resources.CRDS, ref, validation.CRD_CLEANUP_FINALIZER)
        return actions

    def _cleanup_namespace(self, ref: Ref, record: watching.Record) -> int:
        namespace = record.name
        actions = 0
        for storage in list(self._objects):
            info = self._info_for(storage)
            if info is None or not info.namespaced:
                continue
            for key in list(self._scope(storage, namespace)):
                item = self._objects[storage].get(key)
                if item is None:
                    continue
                if not item.obj["metadata"].get("deletionTimestamp"):
                    self._delete_quietly(
                        info, item, grace_period=0 if storage == resources.PODS.storage else None
                    )
                    actions += 1
        remaining = sum(1 for storage in self._objects for _ in self._scope(storage, namespace))
        if not remaining:
            found = self._record_of(ref)
            if found is not None:
                _, current = found
                new = json.loads(current.raw)
                new["spec"]["finalizers"] = []
                if new["metadata"].get("finalizers"):
                    self._commit(resources.NAMESPACES, new, watching.MODIFIED, current)
                else:
                    self._commit(resources.NAMESPACES, new, watching.DELETED, current)
                actions += 1
        return actions


def _owner_uids(obj: dict[str, Any]) -> set[str]:
    return {
        str(r["uid"])
        for r in obj["metadata"].get("ownerReferences") or []
        if isinstance(r, dict) and r.get("uid")
    }


def _namespace_finalizers(info: resources.ResourceInfo, obj: dict[str, Any]) -> list[str]:
    if info.storage != resources.NAMESPACES.storage:
        return []
    return list((obj.get("spec") or {}).get("finalizers") or [])


def _encode_continue(rv: int, last: Key | None) -> str:
    payload = json.dumps({"rv": rv, "start": list(last or ("", ""))}).encode()
    return base64.urlsafe_b64encode(payload).decode()


def _decode_continue(token: str) -> tuple[int, Key]:
    try:
        payload = json.loads(base64.urlsafe_b64decode(token.encode()))
        return int(payload["rv"]), (str(payload["start"][0]), str(payload["start"][1]))
    except (binascii.Error, ValueError, KeyError, IndexError, TypeError):
        raise errors.bad_request(f"invalid continue token: {token!r}") from None
