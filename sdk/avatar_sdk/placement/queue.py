"""Sessions waiting for a GPU: first come, first served, and nobody starves.

Policy (what the tests check):
1. Waiting sessions are tried in arrival order (the session's creation time, then the order they
   were queued) whenever capacity may have appeared: a reservation released, a node joined or
   changed. A session that fits is placed even when an older one still does not (backfilling),
   so one large request never blocks the queue behind it.
2. Anti-starvation: the *head* — the oldest waiting session that some eligible GPU could hold
   if emptied — becomes *protected* once it has waited `starvation_seconds` or has been passed
   over `max_passes` times (another session placed while it was head). A protected head gets a
   hold on one GPU, the eligible one closest to fitting it: the hold's VRAM (its request, or
   the whole GPU when exclusive) counts as reserved for everybody else, so sessions may still
   use what is left on that GPU beyond the hold, but can no longer take the space the head is
   waiting for. As sessions on that GPU end, the head fits and is placed first; its wait is
   bounded by the longest remaining session there (at most the sessions' maxDuration).
3. A session that no eligible GPU could ever hold (too big for all, or no eligible node) waits
   too — a node may join — but is never the head, so it holds nothing back.

This module keeps the order and the counters; the engine applies the hold and places.
"""

from __future__ import annotations

import bisect
import dataclasses
from collections.abc import Iterator

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from avatar_sdk.placement import policy


class QueuePolicy(BaseModel):
    """When the oldest waiting session starts to hold capacity back for itself."""

    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, frozen=True, extra="forbid"
    )

    starvation_seconds: float = Field(
        30.0, ge=0, description="Wait after which the head of the queue is protected."
    )
    max_passes: int = Field(
        16, ge=0, description="Later sessions placed past the head before it is protected."
    )


@dataclasses.dataclass
class Waiter:
    """One session waiting for a GPU."""

    key: str
    request: policy.Request
    arrived_at: float  # seconds (the clock the engine uses); orders the queue
    seq: int  # queueing order, breaks ties between equal arrival times
    passes: int = 0  # times passed over while head

    @property
    def order(self) -> tuple[float, int]:
        return (self.arrived_at, self.seq)

    def waited(self, now: float) -> float:
        return max(now - self.arrived_at, 0.0)

    def protected(self, now: float, rules: QueuePolicy) -> bool:
        return self.waited(now) >= rules.starvation_seconds or self.passes >= rules.max_passes


class PendingQueue:
    """Waiting sessions in arrival order."""

    def __init__(self) -> None:
        self._by_key: dict[str, Waiter] = {}
        self._order: list[tuple[float, int, str]] = []
        self._seq = 0

    def __len__(self) -> int:
        return len(self._by_key)

    def __contains__(self, key: object) -> bool:
        return key in self._by_key

    def __iter__(self) -> Iterator[Waiter]:
        """Waiters oldest first (a snapshot: the queue may change while iterating)."""
        return iter([self._by_key[key] for _, _, key in self._order])

    def get(self, key: str) -> Waiter | None:
        return self._by_key.get(key)

    def push(self, key: str, request: policy.Request, arrived_at: float) -> Waiter:
        """Queue a session; a session already queued keeps its place (and its counters)."""
        existing = self._by_key.get(key)
        if existing is not None:
            existing.request = request
            return existing
        self._seq += 1
        waiter = Waiter(key, request, arrived_at, self._seq)
        self._by_key[key] = waiter
        bisect.insort(self._order, (arrived_at, waiter.seq, key))
        return waiter

    def remove(self, key: str) -> Waiter | None:
        waiter = self._by_key.pop(key, None)
        if waiter is None:
            return None
        entry = (waiter.arrived_at, waiter.seq, key)
        i = bisect.bisect_left(self._order, entry)
        del self._order[i]
        return waiter

    def ahead_of(self, key: str) -> int:
        """How many sessions wait ahead of `key` (0 for the oldest)."""
        waiter = self._by_key.get(key)
        if waiter is None:
            return 0
        return bisect.bisect_left(self._order, (waiter.arrived_at, waiter.seq, key))
