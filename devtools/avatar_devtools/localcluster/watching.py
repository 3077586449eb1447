"""Watch events: the stored record, the bounded history per resource, and the subscribers.

Every write produces one `WatchEvent`, serialised at most once per event type however many
watchers receive it (`WatchEvent.line`), so fan-out costs a bytes concatenation per watcher,
not a `json.dumps`. A watcher holds the lines it has not written to its socket yet; the HTTP
handler drains them in one write, so a burst of events reaches a slow client in a few large
chunks. A watcher that falls more than `max_pending` events behind is closed, as
kube-apiserver closes a watch whose channel is full: the client resumes from the last
resourceVersion it saw.

`EventLog` is the watch cache: a ring buffer of the last `capacity` events of one resource (all
namespaces). A watch that resumes from resourceVersion N replays the events after N; when
events after N have already fallen out of the ring (`N < compacted_rv`) the answer is 410 Gone
("too old resource version"), and the client relists. Resuming scans from the newest event
backwards, so its cost is the number of events replayed, not the length of the history.

Selectors make a watch see transitions: an object that starts matching arrives as ADDED, one
that stops matching as DELETED, as on a real API server.
"""

from __future__ import annotations

import collections
import json
from collections.abc import Callable
from typing import Any

from avatar_devtools.localcluster import selectors

ADDED = "ADDED"
MODIFIED = "MODIFIED"
DELETED = "DELETED"
BOOKMARK = "BOOKMARK"
ERROR = "ERROR"


class Record:
    """One stored version of an object: the parsed dict (never mutated) and its JSON."""

    __slots__ = ("obj", "raw", "rv")

    def __init__(self, obj: dict[str, Any], raw: bytes, rv: int) -> None:
        self.obj = obj
        self.raw = raw
        self.rv = rv

    @property
    def namespace(self) -> str:
        return str(self.obj["metadata"].get("namespace") or "")

    @property
    def name(self) -> str:
        return str(self.obj["metadata"]["name"])

    def projected(self, api_version: str) -> bytes:
        """The JSON as served under another version of the same resource (conversion None)."""
        if self.obj.get("apiVersion") == api_version:
            return self.raw
        return json.dumps({**self.obj, "apiVersion": api_version}, separators=(",", ":")).encode()


def event_line(kind: str, body: bytes) -> bytes:
    return b'{"type":"' + kind.encode() + b'","object":' + body + b"}\n"


class WatchEvent:
    __slots__ = ("_lines", "kind", "old", "record")

    def __init__(self, kind: str, record: Record, old: Record | None) -> None:
        self.kind = kind
        self.record = record
        self.old = old
        self._lines: dict[tuple[str, str], bytes] = {}

    @property
    def rv(self) -> int:
        return self.record.rv

    def line(self, kind: str, api_version: str) -> bytes:
        key = (kind, api_version)
        line = self._lines.get(key)
        if line is None:
            line = self._lines[key] = event_line(kind, self.record.projected(api_version))
        return line


class EventLog:
    """The last `capacity` events of one resource, for watches that resume."""

    def __init__(self, capacity: int) -> None:
        self._events: collections.deque[WatchEvent] = collections.deque(maxlen=max(1, capacity))
        self.compacted_rv = 0

    def __len__(self) -> int:
        return len(self._events)

    def append(self, event: WatchEvent) -> None:
        if len(self._events) == self._events.maxlen:
            self.compacted_rv = self._events[0].rv
        self._events.append(event)

    def since(self, rv: int) -> list[WatchEvent] | None:
        """Events after `rv`, oldest first; None when some of them were compacted away."""
        if rv < self.compacted_rv:
            return None
        newer: list[WatchEvent] = []
        for event in reversed(self._events):
            if event.rv <= rv:
                break
            newer.append(event)
        newer.reverse()
        return newer

    def compact(self, rv: int) -> None:
        """Forget the events up to `rv`, as an etcd compaction does."""
        while self._events and self._events[0].rv <= rv:
            self._events.popleft()
        self.compacted_rv = max(self.compacted_rv, rv)


class Watcher:
    """One open watch: its filter, and the lines waiting to be written to its client."""

    def __init__(
        self,
        *,
        storage: tuple[str, str],
        api_version: str,
        namespace: str | None,
        labels: selectors.LabelSelector,
        fields: selectors.FieldSelector,
        max_pending: int,
        notify: Callable[[], None],
    ) -> None:
        self.storage = storage
        self.api_version = api_version
        self.namespace = namespace
        self.labels = labels
        self.fields = fields
        self.max_pending = max_pending
        self.pending: list[bytes] = []
        self.closed = False
        self.close_reason = ""
        self._notify = notify
        self._filtered = not (labels.empty and fields.empty)
        # Cluster-wide and unfiltered (kopf's usual watch): every event is for it, as it is.
        self._takes_all = namespace is None and not self._filtered

    def matches(self, obj: dict[str, Any]) -> bool:
        if self.namespace is not None and obj["metadata"].get("namespace") != self.namespace:
            return False
        if not self._filtered:
            return True
        return self.labels.matches(obj["metadata"].get("labels")) and self.fields.matches(obj)

    def kind_for(self, event: WatchEvent) -> str | None:
        """The event type this watcher sees, or None when the event is not for it."""
        now = self.matches(event.record.obj)
        if event.kind != MODIFIED or event.old is None:
            return event.kind if now else None
        before = self.matches(event.old.obj)
        if now and before:
            return MODIFIED
        if now:
            return ADDED
        return DELETED if before else None

    def offer(self, event: WatchEvent) -> None:
        if self.closed:
            return
        kind = event.kind if self._takes_all else self.kind_for(event)
        if kind is None:
            return
        self.pending.append(event.line(kind, self.api_version))
        if len(self.pending) > self.max_pending:
            self.close("the watcher fell too far behind")
        self._notify()

    def push(self, line: bytes) -> None:
        self.pending.append(line)
        self._notify()

    def take(self) -> bytes:
        data = b"".join(self.pending)
        self.pending.clear()
        return data

    def close(self, reason: str) -> None:
        if not self.closed:
            self.closed = True
            self.close_reason = reason
            self._notify()
