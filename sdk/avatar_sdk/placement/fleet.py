"""The fleet as the policy sees it: nodes in rank order, with free VRAM per GPU at hand.

Placing a session must not scan sessions (there may be 10,000 live ones), so the fleet keeps,
per node, what the policy asks about, updated in O(GPUs on the node) whenever a reservation is
made or released:
- per GPU: capacity, reserved MiB, session count, whether it is held exclusively, and any
  anti-starvation hold (`Hold`) that keeps VRAM free for the oldest waiting session;
- per node: `block`, the largest VRAM a new shared session can still get on one of its GPUs
  (per-process overhead already taken off), `empty_block`, the largest GPU that is entirely free
  (what an exclusive session needs), and `used`, its number of sessions.

Nodes are kept in *rank* order — biggest node first (usable VRAM), then biggest GPU, then name —
which is the order the ranked policy fills and opens them in. Which nodes a request may use
(selector, tolerations, readiness) is computed once per distinct request signature and cached
until a node changes, so a burst of identical requests pays for it once.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Hashable, Iterable, Mapping
from typing import NamedTuple

from avatar_sdk import api
from avatar_sdk.placement import inventory, ledger

NOTHING = -1  # a block size meaning "no GPU here can take it"


class Hold(NamedTuple):
    """VRAM on one GPU kept for one waiting session (`key`); the whole GPU when exclusive."""

    key: str
    node: str
    gpu: int
    vram_mib: int


class Eligible(NamedTuple):
    """The nodes a request may use, and how many were excluded for each reason."""

    positions: tuple[int, ...]  # indexes into Fleet.slots, rank order
    by_age: tuple[int, ...]  # the same, in the order the nodes joined the fleet
    excluded: Mapping[inventory.Exclusion, int]


class NodeSlot:
    """One node's GPUs and their reservations, with the summaries the policy reads.

    Per GPU, `avail` is the VRAM a new shared session may still use there (free VRAM less the
    per-process overhead; NOTHING if the GPU is held exclusively or full by session count) and
    `empty` its capacity if nothing at all is on it (else NOTHING): the node's `block` and
    `empty_block` are their maxima, recomputed from one GPU's change in O(GPUs).
    """

    __slots__ = (
        "avail",
        "block",
        "capacity",
        "empty",
        "empty_block",
        "exclusive",
        "free_total",
        "held",
        "info",
        "max_sessions",
        "name",
        "node_cap",
        "overhead",
        "reserved",
        "seq",
        "sessions",
        "share",
        "total",
        "used",
    )

    def __init__(self, info: inventory.NodeInfo, seq: int) -> None:
        n = len(info.gpus)
        self.info = info
        self.name = info.name
        self.seq = seq
        self.capacity = [g.capacity_mib for g in info.gpus]
        self.reserved = [0] * n
        self.sessions = [0] * n
        self.exclusive = [0] * n  # exclusive sessions per GPU (more than one only if forced)
        self.held = [0] * n
        self.overhead = info.overhead_mib
        self.max_sessions = info.max_sessions_per_gpu or 1 << 30
        self.node_cap = info.max_sessions if info.max_sessions is not None else 1 << 30
        self.avail = [NOTHING] * n
        self.empty = [NOTHING] * n
        self.used = 0
        self.block = NOTHING
        self.empty_block = NOTHING
        self.total = sum(self.capacity)
        self.free_total = self.total
        self.share = 1.0  # free_total / total: what spreading compares
        for g in range(n):
            self._refresh_gpu(g)
        self._refresh_node()

    @property
    def rank_key(self) -> tuple[int, int, str]:
        gpu = self.capacity[0] if self.capacity else 0
        return (-self.total, -gpu, self.name)

    def free(self, gpu: int) -> int:
        """VRAM on `gpu` not reserved (holds included); negative when over-committed."""
        return self.capacity[gpu] - self.reserved[gpu] - self.held[gpu]

    @property
    def full(self) -> bool:
        """No room for another worker Pod (allocatable pods, CPU or memory), whatever VRAM."""
        return self.used >= self.node_cap

    def shareable(self, gpu: int) -> bool:
        return not self.exclusive[gpu] and self.sessions[gpu] < self.max_sessions and not self.full

    def _refresh_gpu(self, g: int) -> None:
        sessions = self.sessions[g]
        full = self.full
        if not self.exclusive[g] and sessions < self.max_sessions and not full:
            free = self.capacity[g] - self.reserved[g] - self.held[g]
            self.avail[g] = max(free - self.overhead, NOTHING)
        else:
            self.avail[g] = NOTHING
        empty = sessions == 0 and self.held[g] == 0 and not full
        self.empty[g] = self.capacity[g] if empty else NOTHING

    def _refresh_node(self) -> None:
        self.block = max(self.avail, default=NOTHING)
        self.empty_block = max(self.empty, default=NOTHING)

    def best_shared(self, vram_mib: int) -> tuple[int, int]:
        """(GPU, MiB left after placing) of the tightest GPU for a shared session, or (-1, _)."""
        best, tightest = -1, 1 << 62
        for g, avail in enumerate(self.avail):
            if vram_mib <= avail < tightest:
                best, tightest = g, avail
        return best, tightest - vram_mib

    def best_exclusive(self, vram_mib: int) -> tuple[int, int]:
        """(GPU, capacity) of the smallest entirely free GPU that holds `vram_mib`, or (-1, _)."""
        best, size = -1, 1 << 62
        for g, empty in enumerate(self.empty):
            if vram_mib <= empty < size:
                best, size = g, empty
        return best, size

    def apply(self, gpu: int, vram_mib: int, sessions: int, exclusive: bool) -> None:
        """Add (or with negative figures, remove) reservations on one GPU."""
        was_full = self.full
        self.used += sessions
        if self.full != was_full:  # every GPU's room changes with the node's
            for g in range(len(self.capacity)):
                self._refresh_gpu(g)
            self._refresh_node()
        if gpu >= len(self.capacity):
            return  # a GPU the node no longer reports: counted as use, nothing to update
        self.reserved[gpu] += vram_mib
        self.free_total -= vram_mib
        self.share = self.free_total / self.total if self.total > 0 else 0.0
        self.sessions[gpu] += sessions
        if exclusive:
            self.exclusive[gpu] += sessions
        self._refresh_gpu(gpu)
        self._refresh_node()

    def add_held(self, gpu: int, vram_mib: int) -> None:
        if gpu < len(self.capacity):
            self.held[gpu] += vram_mib
            self._refresh_gpu(gpu)
            self._refresh_node()


class Fleet:
    """Nodes in rank order with their reservations; mutated only by the engine."""

    def __init__(self) -> None:
        self.slots: list[NodeSlot] = []
        self._by_name: dict[str, NodeSlot] = {}
        self._seq = 0
        self._eligible: dict[Hashable, Eligible] = {}
        self.hold: Hold | None = None

    def __len__(self) -> int:
        return len(self.slots)

    def get(self, name: str) -> NodeSlot | None:
        return self._by_name.get(name)

    def nodes(self) -> list[inventory.NodeInfo]:
        return [s.info for s in self.slots]

    # -- nodes ---------------------------------------------------------------------------------

    def upsert(self, info: inventory.NodeInfo, book: ledger.Ledger) -> bool:
        """Add or update a node, loading its reservations from `book`; False if nothing changed."""
        old = self._by_name.get(info.name)
        if old is not None and old.info == info:
            return False
        seq = old.seq if old is not None else self._next_seq()
        slot = NodeSlot(info, seq)
        for reservation in book.on_node(info.name):
            slot.apply(reservation.gpu, reservation.vram_mib, 1, reservation.exclusive)
        if self.hold is not None and self.hold.node == info.name:
            slot.add_held(self.hold.gpu, self.hold.vram_mib)
        self._by_name[info.name] = slot
        self._reindex()
        return True

    def reload(self, book: ledger.Ledger) -> None:
        """Reload every node's reservations from `book` (after a rebuild); drops the hold."""
        self.hold = None
        for name, slot in list(self._by_name.items()):
            fresh = NodeSlot(slot.info, slot.seq)
            for reservation in book.on_node(name):
                fresh.apply(reservation.gpu, reservation.vram_mib, 1, reservation.exclusive)
            self._by_name[name] = fresh
        self._reindex()

    def remove(self, name: str) -> bool:
        if self._by_name.pop(name, None) is None:
            return False
        self._reindex()
        return True

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def _reindex(self) -> None:
        self.slots = sorted(self._by_name.values(), key=lambda s: s.rank_key)
        self._eligible.clear()

    # -- reservations and holds ----------------------------------------------------------------

    def apply(self, reservation: ledger.Reservation, sign: int) -> None:
        """Account for a reservation made (+1) or released (-1)."""
        slot = self._by_name.get(reservation.node)
        if slot is not None:
            slot.apply(reservation.gpu, sign * reservation.vram_mib, sign, reservation.exclusive)

    def set_hold(self, hold: Hold | None) -> None:
        """Replace the anti-starvation hold (at most one at a time)."""
        if hold == self.hold:
            return
        if self.hold is not None:
            slot = self._by_name.get(self.hold.node)
            if slot is not None:
                slot.add_held(self.hold.gpu, -self.hold.vram_mib)
        self.hold = hold
        if hold is not None:
            slot = self._by_name.get(hold.node)
            if slot is not None:
                slot.add_held(hold.gpu, hold.vram_mib)

    # -- eligibility ---------------------------------------------------------------------------

    def eligible(
        self,
        signature: Hashable,
        node_selector: Iterable[tuple[str, str]],
        tolerations: Iterable[api.Toleration],
        *,
        needs_gpu: bool = True,
    ) -> Eligible:
        """The nodes a request with this signature may use (cached until a node changes)."""
        cached = self._eligible.get(signature)
        if cached is not None:
            return cached
        selector = tuple(node_selector)
        tolerations = tuple(tolerations)
        positions: list[int] = []
        excluded: Counter[inventory.Exclusion] = Counter()
        for pos, slot in enumerate(self.slots):
            reason = inventory.exclusion(slot.info, selector, tolerations, needs_gpu=needs_gpu)
            if reason is None:
                positions.append(pos)
            else:
                excluded[reason] += 1
        by_age = sorted(positions, key=lambda p: self.slots[p].seq)
        result = Eligible(tuple(positions), tuple(by_age), dict(excluded))
        self._eligible[signature] = result
        return result
