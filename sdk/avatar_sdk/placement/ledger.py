"""Reservations of GPU VRAM, one per placed session: the placement engine's memory.

The truth lives in the API: each placed session's `status.placement` records its node, GPU and
VRAM, so after a restart `Ledger.rebuild()` reconstructs exactly the ledger that was live (sessions
never move, so a recorded placement is honoured as it is, even where it no longer fits: a GPU that
shrank shows negative free VRAM and takes nothing new until enough sessions end).

Invariants the ledger keeps on its own, whatever the caller does:
- one reservation per session key: reserving a key again with the same placement is a no-op,
  with a different one it is refused (`Conflict`) — a restart can never place a session twice;
- an exclusive reservation never shares its GPU with anything, a shared one never lands on a GPU
  held exclusively (`Conflict`);
- `release()` returns the reservation the first time and None ever after.
Capacity is not its business (it knows no GPU sizes): the policy checks fit before reserving.

The ledger is not thread-safe by itself; the engine is its one writer, under a lock.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import NamedTuple

from avatar_sdk import api


class Conflict(ValueError):
    """A reservation that would break one of the ledger's invariants."""


class Reservation(NamedTuple):
    """VRAM held on one GPU for one session."""

    key: str
    node: str
    gpu: int
    vram_mib: int
    exclusive: bool = False
    product: str | None = None

    def to_placement(self) -> api.Placement:
        return api.Placement(
            node=self.node,
            gpu=self.gpu,
            vram_mib=self.vram_mib,
            exclusive=self.exclusive,
            product=self.product,
        )

    @classmethod
    def from_placement(cls, key: str, placement: api.Placement) -> Reservation | None:
        """The reservation a recorded placement stands for; None when it holds no GPU."""
        if placement.gpu is None or not placement.node:
            return None
        return cls(
            key=key,
            node=placement.node,
            gpu=placement.gpu,
            vram_mib=placement.vram_mib,
            exclusive=placement.exclusive,
            product=placement.product,
        )


class GpuUsage(NamedTuple):
    """What is reserved on one GPU."""

    reserved_mib: int = 0
    sessions: int = 0
    exclusive: bool = False


class SessionRecord(NamedTuple):
    """What `Ledger.rebuild()` reads from one AvatarSession object."""

    key: str
    status: api.AvatarSessionStatus


def holds_gpu(status: api.AvatarSessionStatus) -> bool:
    """Whether a session's status says it holds its placement's VRAM now."""
    if status.placement is None or status.placement.gpu is None:
        return False
    return not (status.phase is not None and status.phase.finished)


class Ledger:
    """Reservations by session key, with per-GPU and per-node totals kept in step."""

    def __init__(self) -> None:
        self._by_key: dict[str, Reservation] = {}
        # (node, gpu) -> [reserved MiB, sessions, exclusive sessions]; lists for cheap updates.
        self._by_gpu: dict[tuple[str, int], list[int]] = {}
        self._by_node: dict[str, set[str]] = {}

    # -- queries -------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._by_key)

    def __contains__(self, key: object) -> bool:
        return key in self._by_key

    def __iter__(self) -> Iterator[Reservation]:
        return iter(self._by_key.values())

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Ledger):
            return NotImplemented
        return self._by_key == other._by_key and self.usage() == other.usage()

    def get(self, key: str) -> Reservation | None:
        return self._by_key.get(key)

    def gpu_usage(self, node: str, gpu: int) -> GpuUsage:
        entry = self._by_gpu.get((node, gpu))
        if entry is None:
            return GpuUsage()
        return GpuUsage(entry[0], entry[1], entry[2] > 0)

    def node_usage(self, node: str) -> dict[int, GpuUsage]:
        """Usage of each GPU of `node` that holds a reservation."""
        usage: dict[int, GpuUsage] = {}
        for key in self._by_node.get(node, ()):
            gpu = self._by_key[key].gpu
            if gpu not in usage:
                usage[gpu] = self.gpu_usage(node, gpu)
        return usage

    def keys_on(self, node: str) -> list[str]:
        return sorted(self._by_node.get(node, ()))

    def on_node(self, node: str) -> list[Reservation]:
        return [self._by_key[k] for k in self.keys_on(node)]

    def usage(self) -> dict[tuple[str, int], GpuUsage]:
        """Every GPU with a reservation and what it holds."""
        return {k: GpuUsage(e[0], e[1], e[2] > 0) for k, e in self._by_gpu.items() if e[1]}

    # -- changes -------------------------------------------------------------------------------

    def check(self, reservation: Reservation) -> None:
        """Raise Conflict if `reservation` cannot join the ledger."""
        existing = self._by_key.get(reservation.key)
        if existing is not None:
            if existing == reservation:
                return
            raise Conflict(
                f"{reservation.key} is already placed on {existing.node}/gpu{existing.gpu}"
            )
        entry = self._by_gpu.get((reservation.node, reservation.gpu))
        if entry is None or entry[1] == 0:
            return
        where = f"{reservation.node}/gpu{reservation.gpu}"
        if reservation.exclusive:
            raise Conflict(f"{reservation.key} wants {where} exclusively but it is in use")
        if entry[2]:
            raise Conflict(f"{reservation.key} cannot share {where}: it is held exclusively")

    def reserve(self, reservation: Reservation, *, force: bool = False) -> bool:
        """Record a reservation; False if this exact one was already there.

        `force` records it even where it breaks the GPU invariants (a placement recorded in the
        API is a fact: the session runs there), still refusing a second placement of one key.
        """
        existing = self._by_key.get(reservation.key)
        if existing is not None:
            if existing == reservation:
                return False
            raise Conflict(
                f"{reservation.key} is already placed on {existing.node}/gpu{existing.gpu}"
            )
        if not force:
            self.check(reservation)
        self._by_key[reservation.key] = reservation
        entry = self._by_gpu.setdefault((reservation.node, reservation.gpu), [0, 0, 0])
        entry[0] += reservation.vram_mib
        entry[1] += 1
        entry[2] += reservation.exclusive
        self._by_node.setdefault(reservation.node, set()).add(reservation.key)
        return True

    def release(self, key: str) -> Reservation | None:
        """Drop a session's reservation: the reservation the first time, None afterwards."""
        reservation = self._by_key.pop(key, None)
        if reservation is None:
            return None
        gpu_key = (reservation.node, reservation.gpu)
        entry = self._by_gpu[gpu_key]
        entry[0] -= reservation.vram_mib
        entry[1] -= 1
        entry[2] -= reservation.exclusive
        if entry[1] == 0:
            del self._by_gpu[gpu_key]
        keys = self._by_node[reservation.node]
        keys.discard(key)
        if not keys:
            del self._by_node[reservation.node]
        return reservation

    # -- start-up ------------------------------------------------------------------------------

    @classmethod
    def rebuild(cls, sessions: Iterable[SessionRecord]) -> tuple[Ledger, list[str]]:
        """The ledger that the sessions' statuses describe, and the keys that conflict.

        Finished sessions and sessions without a GPU placement hold nothing. A conflicting
        placement (two sessions claim one GPU, one of them exclusively) is kept — both sessions
        do run there — and its key is reported for the operator to log.
        """
        ledger = cls()
        conflicts: list[str] = []
        for record in sessions:
            placement = record.status.placement
            if placement is None or not holds_gpu(record.status):
                continue
            reservation = Reservation.from_placement(record.key, placement)
            if reservation is None:
                continue
            try:
                ledger.check(reservation)
            except Conflict:
                conflicts.append(record.key)
                if record.key in ledger:
                    continue  # the same key twice in one listing: keep the first
            ledger.reserve(reservation, force=True)
        return ledger, conflicts
