"""One active operator replica at a time, through a `coordination.k8s.io/v1` Lease.

kopf's peering only pauses other operators while one is active; it does not elect a leader, so
two replicas started together both run. This is client-go's leader election, small:

* the holder renews `spec.renewTime` every `renew_seconds`;
* a candidate remembers *when it last saw the Lease change* on its own clock (never the
  timestamps inside it, so clock skew between nodes cannot cut a term short), and takes the Lease
  over once it has seen no change for `lease_duration_seconds`;
* every write is a replace with the resourceVersion just read: two candidates racing for an
  expired Lease get one success and one 409 Conflict;
* a leader that fails to renew for a whole term stops acting (the caller's work is cancelled)
  before anyone else can have taken over; on a clean shutdown it releases the Lease, so the
  standby takes over at its next poll instead of after a full term.

Failover after a crash takes at most `lease_duration_seconds + renew_seconds` (12 s by default).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine
from typing import Any

from avatar_operator import kube
from avatar_sdk import timestamps

logger = logging.getLogger(__name__)


class LeaderElector:
    """Acquires and keeps one Lease for `identity`."""

    def __init__(
        self,
        api: kube.Kube,
        *,
        namespace: str,
        name: str,
        identity: str,
        lease_duration_seconds: float = 10.0,
        renew_seconds: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._api = api
        self.namespace = namespace
        self.name = name
        self.identity = identity
        self.lease_duration = lease_duration_seconds
        self.renew_interval = renew_seconds
        self._clock = clock
        self._observed_record: tuple[Any, ...] | None = None
        self._observed_at = 0.0
        self._last_renewed_at = 0.0
        self.is_leader = False

    def _spec(self, transitions: int, acquired: str | None = None) -> dict[str, Any]:
        now = timestamps.format_micro(time.time())
        return {
            "holderIdentity": self.identity,
            "leaseDurationSeconds": max(1, round(self.lease_duration)),
            "acquireTime": acquired or now,
            "renewTime": now,
            "leaseTransitions": transitions,
        }

    async def try_acquire_or_renew(self) -> bool:
        """One round: True if this replica holds the Lease afterwards."""
        try:
            lease = await self._api.read_lease(self.namespace, self.name)
        except kube.NotFound:
            body = {
                "apiVersion": "coordination.k8s.io/v1",
                "kind": "Lease",
                "metadata": {"name": self.name, "namespace": self.namespace},
                "spec": self._spec(transitions=0),
            }
            try:
                await self._api.create_lease(self.namespace, body)
            except kube.Conflict:
                return self._lost("another replica created the lease first")
            return self._won()

        spec = lease.get("spec") or {}
        holder = spec.get("holderIdentity")
        record = (holder, spec.get("renewTime"), spec.get("leaseTransitions"))
        now = self._clock()
        if record != self._observed_record:
            self._observed_record, self._observed_at = record, now

        if holder == self.identity:
            lease["spec"] = self._spec(spec.get("leaseTransitions") or 0, spec.get("acquireTime"))
        elif holder and now - self._observed_at < self.lease_duration:
            return self._lost(f"held by {holder}")
        else:
            lease["spec"] = self._spec((spec.get("leaseTransitions") or 0) + 1)
        try:
            await self._api.replace_lease(self.namespace, self.name, lease)
        except kube.Conflict:
            return self._lost("lease changed while renewing")
        return self._won()

    def _won(self) -> bool:
        if not self.is_leader:
            logger.info("became leader", extra={"identity": self.identity, "lease": self.name})
        self.is_leader = True
        self._last_renewed_at = self._clock()
        return True

    def _lost(self, why: str) -> bool:
        if self.is_leader:
            logger.warning("lost leadership", extra={"identity": self.identity, "why": why})
        self.is_leader = False
        return False

    async def release(self) -> None:
        """Give the Lease up (on a clean shutdown) so a standby takes over at once."""
        if not self.is_leader:
            return
        self.is_leader = False
        try:
            lease = await self._api.read_lease(self.namespace, self.name)
            if (lease.get("spec") or {}).get("holderIdentity") != self.identity:
                return
            lease["spec"]["holderIdentity"] = None
            lease["spec"]["leaseDurationSeconds"] = 1
            await self._api.replace_lease(self.namespace, self.name, lease)
            logger.info("released leadership", extra={"identity": self.identity})
        except kube.KubeError as exc:
            logger.warning("could not release the lease", extra={"error": str(exc)})

    async def run(self, lead: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """Wait to lead, then run `lead()` until it returns or leadership is lost.

        Returns when leadership ends; the caller decides whether to campaign again (the
        operator's main exits, so that a fresh process rebuilds its state from the API).
        """
        while not self.is_leader:
            try:
                await self.try_acquire_or_renew()
            except (TimeoutError, kube.KubeError, OSError) as exc:
                logger.warning("lease request failed", extra={"error": str(exc)})
            if not self.is_leader:
                await asyncio.sleep(self.renew_interval)

        lead_task = asyncio.create_task(lead(), name="leader-work")
        try:
            while not lead_task.done():
                done, _ = await asyncio.wait({lead_task}, timeout=self.renew_interval)
                if done:
                    break
                try:
                    renewed = await self.try_acquire_or_renew()
                except (TimeoutError, kube.KubeError, OSError) as exc:
                    logger.warning("lease renewal failed", extra={"error": str(exc)})
                    renewed = False
                if renewed:
                    continue
                if not self.is_leader:  # someone else holds the Lease now
                    break
                # The API is unreachable: stop acting before a standby may take over (it
                # waits a whole term after the last renewal it saw).
                if (
                    self._clock() - self._last_renewed_at
                    >= self.lease_duration - self.renew_interval
                ):
                    logger.error("stepping down: lease not renewed in time")
                    self.is_leader = False
                    break
        finally:
            if not lead_task.done():
                lead_task.cancel()
            await asyncio.gather(lead_task, return_exceptions=True)
            await self.release()
