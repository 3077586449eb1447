"""What the operator remembers between events: one typed record per session.

The API is the truth (a restart rebuilds all of this from it, `Reconciler.rebuild`); the memory
is what keeps each event cheap: the latest body of every session, parsed once per
resourceVersion (status) and generation (spec), the session's lock, and the few facts about the
work in flight that the API cannot hold (a started session's status not yet written, when it was
last tried). Everything about one session lives in its `SessionRecord` and goes with it when the
session is deleted — nothing to clean field by field. The worker Pods are indexed by the uid of
their session (a Pod can be seen before its session, at start-up), the Nodes by name.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Iterator, Mapping

from avatar_sdk import api
from avatar_sdk.objects import Obj, key_of, resource_version


@dataclasses.dataclass(slots=True)
class SessionRecord:
    """One session as the operator knows it."""

    key: str
    uid: str
    body: Obj  # the latest body seen or written
    lock: asyncio.Lock = dataclasses.field(default_factory=asyncio.Lock)
    status: tuple[str, api.AvatarSessionStatus] | None = None  # (resourceVersion, parsed)
    spec: tuple[int, api.AvatarSessionSpec | api.SpecError] | None = None  # (generation, …)
    last_attempt: float = 0.0  # when admission last tried it (the sweep's retry pacing)
    first_attempt: float = 0.0  # when admission first tried it (the watchdog counts from here)
    last_error: str = ""  # why the last attempt to admit it failed, for the watchdog's message
    start_patch: Obj | None = None  # started, its status Starting not written yet
    collected: bool = False  # its Pod and Secret were deleted (garbage collection ran)
    report_written_at: float = 0.0  # when a worker's report was last written to the status
    pending_report: Obj | None = None  # reports coalesced since, written by `report_flush`
    report_flush: asyncio.Task[None] | None = None


class Bodies(Mapping[str, Obj]):
    """A read-only view: `namespace/name` → the latest body of each session."""

    def __init__(self, records: dict[str, SessionRecord]) -> None:
        self._records = records

    def __getitem__(self, key: str) -> Obj:
        return self._records[key].body

    def __iter__(self) -> Iterator[str]:
        return iter(self._records)

    def __len__(self) -> int:
        return len(self._records)


class Memory:
    """Sessions by `namespace/name` (and uid), worker Pods by session uid, Nodes by name."""

    def __init__(self) -> None:
        self._records: dict[str, SessionRecord] = {}
        self._key_by_uid: dict[str, str] = {}
        self.pods: dict[str, Obj] = {}  # session uid → its latest worker Pod
        self.nodes: dict[str, Obj] = {}
        self.bodies = Bodies(self._records)

    def __len__(self) -> int:
        return len(self._records)

    def __iter__(self) -> Iterator[SessionRecord]:
        return iter(list(self._records.values()))

    def get(self, key: str) -> SessionRecord | None:
        return self._records.get(key)

    def body(self, key: str) -> Obj | None:
        record = self._records.get(key)
        return record.body if record is not None else None

    def by_uid(self, uid: str) -> SessionRecord | None:
        key = self._key_by_uid.get(uid)
        return self._records.get(key) if key is not None else None

    def observe(self, body: Obj) -> SessionRecord:
        """Remember `body` unless an older copy of what is known (a late event); a session
        re-created under the same name starts a new record."""
        key, uid = key_of(body), body["metadata"].get("uid", "")
        record = self._records.get(key)
        if record is None or record.uid != uid:
            if record is not None:
                self._key_by_uid.pop(record.uid, None)
            record = SessionRecord(key=key, uid=uid, body=body)
            self._records[key] = record
            self._key_by_uid[uid] = key
        elif resource_version(body) >= resource_version(record.body):
            record.body = body
        return record

    def forget(self, key: str) -> SessionRecord | None:
        """A deleted session: its record, gone from the memory."""
        record = self._records.pop(key, None)
        if record is not None:
            self._key_by_uid.pop(record.uid, None)
        return record

    def status_of(self, body: Obj) -> api.AvatarSessionStatus:
        """The session's status, parsed once per resourceVersion."""
        version = body["metadata"].get("resourceVersion")
        record = self._record_of(body)
        if record is not None and version and record.status and record.status[0] == version:
            return record.status[1]
        status = api.parse_status(body.get("status"))
        if record is not None and version:
            record.status = (version, status)
        return status

    def spec_of(self, body: Obj) -> api.AvatarSessionSpec:
        """The session's spec, parsed once per generation; raises api.SpecError."""
        generation = body["metadata"].get("generation")
        gen = generation if isinstance(generation, int) else None
        record = self._record_of(body) if gen is not None else None
        if record is not None and record.spec is not None and record.spec[0] == gen:
            cached = record.spec[1]
            if isinstance(cached, api.SpecError):
                raise api.SpecError(cached.problems)  # a fresh one: no traceback piles up
            return cached
        try:
            spec = api.parse_spec(body.get("spec"))
        except api.SpecError as exc:
            if record is not None and gen is not None:
                record.spec = (gen, exc)
            raise
        if record is not None and gen is not None:
            record.spec = (gen, spec)
        return spec

    def _record_of(self, body: Obj) -> SessionRecord | None:
        record = self._records.get(key_of(body))
        uid = body["metadata"].get("uid", "")
        return record if record is not None and record.uid == uid else None
