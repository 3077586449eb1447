"""The placement engine: the one object the operator talks to.

It owns the ledger, the fleet index and the queue, and is their only writer: every public method
takes one lock and never awaits or does I/O inside it, so kopf's concurrent handlers (coroutines
on one loop, or sync handlers in threads) see each call happen at once. Calls are cheap
(microseconds), so holding a lock costs the event loop nothing.

Lifecycle, as the operator drives it:
1. `rebuild(records)` once at start-up, from every AvatarSession listed through the API (the
   statuses are the ledger). Until then `place()` refuses (`NotReady`): placing before the
   existing reservations are known is how a restart would place a session twice.
2. `upsert_node(body)` / `remove_node(name)` on Node events (and for the initial Node listing).
3. `place(key, request)` when a session needs a GPU: placed (write status.placement, then
   create the Pod), already placed (idempotent: same answer), no GPU needed, or Pending with
   reason Unschedulable and a message naming the VRAM asked and the largest free block.
4. `release(key)` when a session ends or is deleted: the reservation comes back exactly once.
Whenever capacity appears (a release, a node joining or changing), waiting sessions are placed in
queue order and returned as `Admission`s: the operator writes each one's status as for `place()`.
"""

from __future__ import annotations

import enum
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, NamedTuple

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from avatar_sdk import api
from avatar_sdk.placement import capacity, fleet, inventory, ledger, policy, queue

REASON_UNSCHEDULABLE = "Unschedulable"


class NotReady(RuntimeError):
    """`place()` before `rebuild()`: the existing reservations are not known yet."""


# Names that shadow these modules inside a class body (the settings' fields, the engine's
# `ledger` property): annotations there use these aliases.
_InventorySettings = inventory.InventorySettings
_QueuePolicy = queue.QueuePolicy
_Reservation = ledger.Reservation
_SessionRecord = ledger.SessionRecord


class Settings(BaseModel):
    """Placement settings (the operator embeds this in its own settings)."""

    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, frozen=True, extra="forbid"
    )

    inventory: _InventorySettings = Field(default_factory=_InventorySettings)
    strategy: policy.Strategy = Field(policy.Strategy.RANKED, description="Placement policy.")
    window: int = Field(
        policy.DEFAULT_WINDOW, ge=1, description="Used nodes whose GPUs compete on best fit."
    )
    queue: _QueuePolicy = Field(default_factory=_QueuePolicy)


class Outcome(enum.StrEnum):
    PLACED = "Placed"
    ALREADY_PLACED = "AlreadyPlaced"
    NO_GPU = "NoGpu"  # gpu: none — nothing to reserve; the Pod gets no GPU
    PENDING = "Pending"


class Decision(NamedTuple):
    """The answer to `place()`."""

    outcome: Outcome
    reservation: ledger.Reservation | None = None
    reason: str | None = None  # REASON_UNSCHEDULABLE while pending
    message: str = ""

    @property
    def placed(self) -> bool:
        return self.reservation is not None

    @property
    def placement(self) -> api.Placement | None:
        """What to write into status.placement (None: nothing, or no GPU)."""
        return self.reservation.to_placement() if self.reservation is not None else None


class Admission(NamedTuple):
    """A waiting session that has just been placed."""

    key: str
    reservation: ledger.Reservation

    @property
    def placement(self) -> api.Placement:
        return self.reservation.to_placement()


class Released(NamedTuple):
    """The answer to `release()`: what was freed (None the second time) and who got in."""

    reservation: ledger.Reservation | None
    admitted: tuple[Admission, ...] = ()


class PendingInfo(NamedTuple):
    key: str
    vram_mib: int
    waited_seconds: float
    ahead: int
    protected: bool
    message: str


class Engine:
    """Places sessions on GPUs; thread-safe, no I/O."""

    def __init__(
        self, settings: Settings | None = None, *, clock: Callable[[], float] = time.time
    ) -> None:
        self.settings = settings or Settings()
        self._clock = clock
        self._lock = threading.Lock()
        self._ledger = ledger.Ledger()
        self._fleet = fleet.Fleet()
        self._queue = queue.PendingQueue()
        self._ready = False
        self._head: queue.Waiter | None = None
        self._head_dirty = True

    # -- views ---------------------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        return self._ready

    @property
    def ledger(self) -> ledger.Ledger:
        """The live ledger (read it, never write it)."""
        return self._ledger

    @property
    def hold(self) -> fleet.Hold | None:
        return self._fleet.hold

    def placement_of(self, key: str) -> api.Placement | None:
        with self._lock:
            found = self._ledger.get(key)
            return found.to_placement() if found is not None else None

    def nodes(self) -> list[inventory.NodeInfo]:
        with self._lock:
            return self._fleet.nodes()

    def capacity(self, vram_mib: int, *, exclusive: bool = False) -> capacity.View:
        """Free VRAM per GPU and how many more sessions of `vram_mib` fit."""
        with self._lock:
            return capacity.compute(
                self._fleet.nodes(), self._ledger, vram_mib, exclusive=exclusive
            )

    def pending(self) -> list[PendingInfo]:
        with self._lock:
            now = self._clock()
            head = self._head_waiter()
            return [
                PendingInfo(
                    w.key,
                    w.request.vram_mib,
                    w.waited(now),
                    i,
                    head is w and w.protected(now, self.settings.queue),
                    self._pending_message(w.request, i),
                )
                for i, w in enumerate(self._queue)
            ]

    def audit(self) -> list[str]:
        """Problems found re-deriving the fleet index from the ledger (empty when consistent):
        for tests, and for an operator that wants to check itself."""
        with self._lock:
            problems: list[str] = []
            for slot in self._fleet.slots:
                usage = self._ledger.node_usage(slot.name)
                for g in range(len(slot.capacity)):
                    u = usage.get(g, ledger.GpuUsage())
                    seen = (slot.reserved[g], slot.sessions[g], slot.exclusive[g] > 0)
                    if seen != (u.reserved_mib, u.sessions, u.exclusive):
                        problems.append(f"{slot.name}/gpu{g}: index {seen} != ledger {u}")
                    if u.exclusive and u.sessions > 1:
                        problems.append(f"{slot.name}/gpu{g}: exclusive GPU shared")
                    if u.reserved_mib > slot.capacity[g]:
                        problems.append(f"{slot.name}/gpu{g}: over-committed")
                if slot.used != len(self._ledger.keys_on(slot.name)):
                    problems.append(f"{slot.name}: {slot.used} sessions in the index")
            for waiter in self._queue:
                if waiter.key in self._ledger:
                    problems.append(f"{waiter.key}: both placed and waiting")
            return problems

    # -- start-up ------------------------------------------------------------------------------

    def rebuild(self, records: Iterable[_SessionRecord]) -> list[str]:
        """Load every session's recorded placement; returns conflicting keys (kept, logged)."""
        with self._lock:
            book, conflicts = ledger.Ledger.rebuild(records)
            self._ledger = book
            self._fleet.reload(book)
            for waiter in list(self._queue):
                if waiter.key in book:
                    self._queue.remove(waiter.key)
            self._head_dirty = True
            self._ready = True
            return conflicts

    def adopt(self, key: str, placement: api.Placement) -> bool:
        """Record a placement read from a session's status (idempotent); False if it was known.

        Raises ledger.Conflict if the session is already placed elsewhere.
        """
        reservation = ledger.Reservation.from_placement(key, placement)
        if reservation is None:
            return False
        with self._lock:
            if not self._ledger.reserve(reservation, force=True):
                return False
            self._fleet.apply(reservation, +1)
            if self._queue.remove(key) is not None:
                self._head_dirty = True
            return True

    # -- nodes ---------------------------------------------------------------------------------

    def upsert_node(self, body: Mapping[str, Any]) -> list[Admission]:
        """A Node was added or changed; returns waiting sessions that now got a GPU."""
        info = inventory.parse_node(body, self.settings.inventory)
        with self._lock:
            if not info.name or not self._fleet.upsert(info, self._ledger):
                return []
            self._head_dirty = True
            return self._drain() if self._ready else []

    def remove_node(self, name: str) -> list[str]:
        """A Node is gone; returns the sessions placed on it (their reservations stay until
        released: the operator ends them, reason NodeLost)."""
        with self._lock:
            if self._fleet.remove(name):
                self._head_dirty = True
                if self._fleet.hold is not None and self._fleet.hold.node == name:
                    self._fleet.set_hold(None)
            return self._ledger.keys_on(name)

    # -- sessions ------------------------------------------------------------------------------

    def place(
        self, key: str, request: policy.Request, *, arrived_at: float | None = None
    ) -> Decision:
        """Place a session, or queue it. `arrived_at` (its creation time, in the engine's clock,
        by default the wall clock) orders the queue; it defaults to now."""
        with self._lock:
            if not self._ready:
                raise NotReady("rebuild() the ledger from the sessions' statuses first")
            existing = self._ledger.get(key)
            if existing is not None:
                return Decision(Outcome.ALREADY_PLACED, existing)
            if not request.needs_gpu:
                if self._queue.remove(key) is not None:
                    self._head_dirty = True
                return Decision(Outcome.NO_GPU)
            now = self._clock()
            if self._queue:
                self._update_hold(now)
            placed = self._try(key, request)
            if placed is not None:
                self._passed_over(key)
                if self._queue.remove(key) is not None:
                    self._head_dirty = True
                return Decision(Outcome.PLACED, placed)
            waiter = self._queue.get(key)
            if waiter is None:
                arrived = arrived_at if arrived_at is not None else now
                waiter = self._queue.push(key, request, arrived)
                self._head_dirty = True
            elif waiter.request != request:
                waiter.request = request
                self._head_dirty = True
            self._update_hold(now)
            ahead = self._queue.ahead_of(key)
            return Decision(
                Outcome.PENDING,
                reason=REASON_UNSCHEDULABLE,
                message=self._pending_message(request, ahead),
            )

    def release(self, key: str) -> Released:
        """A session ended or was deleted: free its GPU (once) and admit who now fits."""
        with self._lock:
            dequeued = self._queue.remove(key) is not None
            reservation = self._ledger.release(key)
            if reservation is not None:
                self._fleet.apply(reservation, -1)
            hold = self._fleet.hold
            if hold is not None and hold.key == key:
                self._fleet.set_hold(None)
            if dequeued:
                self._head_dirty = True
            if reservation is None and not dequeued:
                return Released(None)
            return Released(reservation, tuple(self._drain()))

    def reserve_spare(self, key: str, request: policy.Request) -> api.Placement | None:
        """A GPU for a warm pool worker (`key`), only if one fits now and no session waits:
        spares never queue and never take capacity from a session in line. Idempotent."""
        with self._lock:
            if not self._ready:
                raise NotReady("rebuild() the ledger from the sessions' statuses first")
            existing = self._ledger.get(key)
            if existing is not None:
                return existing.to_placement()
            if self._queue:
                return None
            reserved = self._try(key, request)
            return reserved.to_placement() if reserved is not None else None

    def transfer(self, old_key: str, new_key: str) -> api.Placement | None:
        """Move a reservation to another key (a session claimed a warm worker: the worker's
        GPU becomes the session's), at once; None if `old_key` held none. The GPU's usage is
        unchanged, so no waiter is admitted by it."""
        with self._lock:
            reservation = self._ledger.release(old_key)
            if reservation is None:
                return None
            moved = reservation._replace(key=new_key)
            self._ledger.reserve(moved, force=True)
            if self._queue.remove(new_key) is not None:
                self._head_dirty = True
            return moved.to_placement()

    def reevaluate(self) -> list[Admission]:
        """Try the queue again (e.g. from a timer, so that a protected head gets its hold)."""
        with self._lock:
            return self._drain() if self._ready else []

    # -- internals (lock held) -----------------------------------------------------------------

    def _eligible(self, request: policy.Request) -> fleet.Eligible:
        return self._fleet.eligible(
            request.signature,
            request.node_selector,
            request.tolerations,
            needs_gpu=request.needs_gpu,
        )

    def _try(self, key: str, request: policy.Request) -> _Reservation | None:
        """Reserve a GPU for the session if one fits now (its own hold does not count)."""
        hold = self._fleet.hold
        own_hold = hold is not None and hold.key == key
        if own_hold:
            self._fleet.set_hold(None)
        eligible = self._eligible(request)
        choice = policy.choose(
            self._fleet.slots,
            eligible,
            request,
            self.settings.strategy,
            self.settings.window,
        )
        if choice is None:
            if own_hold:
                self._fleet.set_hold(hold)
            return None
        reservation = ledger.Reservation(
            key=key,
            node=choice.slot.name,
            gpu=choice.gpu,
            vram_mib=choice.vram_mib,
            exclusive=request.exclusive,
            product=choice.slot.info.product,
        )
        self._ledger.reserve(reservation)
        self._fleet.apply(reservation, +1)
        return reservation

    def _passed_over(self, placed_key: str) -> None:
        head = self._head_waiter()
        if head is not None and head.key != placed_key:
            head.passes += 1

    def _head_waiter(self) -> queue.Waiter | None:
        """The oldest waiting session that some eligible GPU could ever hold."""
        if self._head_dirty:
            self._head = next(
                (
                    w
                    for w in self._queue
                    if policy.could_ever_fit(
                        self._fleet.slots, self._eligible(w.request), w.request
                    )
                ),
                None,
            )
            self._head_dirty = False
        return self._head

    def _update_hold(self, now: float) -> None:
        """Give the protected head a hold on the GPU closest to fitting it (sticky)."""
        head = self._head_waiter()
        if head is None or not head.protected(now, self.settings.queue):
            self._fleet.set_hold(None)
            return
        current = self._fleet.hold
        eligible = self._eligible(head.request)
        if current is not None and current.key == head.key:
            slot = self._fleet.get(current.node)
            if slot is not None and any(self._fleet.slots[p] is slot for p in eligible.positions):
                return
        target = policy.hold_target(self._fleet.slots, eligible, head.request)
        if target is None:
            self._fleet.set_hold(None)
            return
        slot, gpu = target
        self._fleet.set_hold(
            fleet.Hold(head.key, slot.name, gpu, policy.reservation_size(slot, gpu, head.request))
        )

    def _drain(self) -> list[Admission]:
        """Place waiting sessions in queue order while they fit."""
        admitted: list[Admission] = []
        if not self._queue:
            return admitted
        now = self._clock()
        self._update_hold(now)
        room = self._largest_room()
        for waiter in self._queue:
            need = waiter.request.vram_mib
            if need > room and not (self._fleet.hold and self._fleet.hold.key == waiter.key):
                continue  # cheap skip: no GPU has that much room
            placed = self._try(waiter.key, waiter.request)
            if placed is None:
                continue
            self._passed_over(waiter.key)
            self._queue.remove(waiter.key)
            self._head_dirty = True
            admitted.append(Admission(waiter.key, placed))
            self._update_hold(now)
            room = self._largest_room()
        return admitted

    def _largest_room(self) -> int:
        """An upper bound of the VRAM any request could get on one GPU now."""
        room = fleet.NOTHING
        for slot in self._fleet.slots:
            room = max(room, slot.block, slot.empty_block)
        return room

    def _pending_message(self, request: policy.Request, ahead: int) -> str:
        eligible = self._eligible(request)
        asked = f"{request.vram_mib} MiB" + (" (a whole GPU)" if request.exclusive else "")
        if not eligible.positions:
            reasons = ", ".join(f"{n} {r}" for r, n in sorted(eligible.excluded.items()))
            return f"no eligible node for {asked}: 0/{len(self._fleet)} nodes ({reasons or 'none'})"
        if not policy.could_ever_fit(self._fleet.slots, eligible, request):
            biggest = max(
                self._fleet.slots[p].capacity[g] - self._fleet.slots[p].overhead
                for p in eligible.positions
                for g in range(len(self._fleet.slots[p].capacity))
            )
            return f"no eligible GPU can ever hold {asked}: the largest takes {biggest} MiB"
        block = policy.largest_block(self._fleet.slots, eligible, request)
        free = f"largest free block {block[0]} MiB on {block[1]}/gpu{block[2]}" if block else ""
        return f"waiting for {asked} on one GPU: {free}; {ahead} waiting ahead"
