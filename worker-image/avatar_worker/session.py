"""A live session from join to exit: what `avatar-worker run` does in a pod.

`run_session` joins the room with the pipeline's tracks, reports Joined, feeds the status
reporter a snapshot twice a second (it coalesces), and ends on the first of: the room ended
(`AgentLeft`, `RoomEnded`), a stop request (SIGTERM: the pod is being deleted; the operator
knows why, the worker reports no reason of its own), or — only when asked, i.e. when no
operator watches `playback.lastActivityAt` and enforces it — no audio from the agent for
`idle_timeout` (`IdleTimeout`). Then it reports Ended, leaves, and closes what it started.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from avatar_sdk import api
from avatar_worker import clock as clocks
from avatar_worker.pipeline import AvatarPipeline
from avatar_worker.status import StatusReporter
from avatar_worker.transports.base import JoinError, Transport

logger = logging.getLogger(__name__)

SNAPSHOT_INTERVAL = 0.5  # s between snapshots handed to the status reporter


async def run_session(
    pipeline: AvatarPipeline,
    transport: Transport,
    *,
    participant_id: str,
    reporter: StatusReporter | None = None,
    idle_timeout: float = 0.0,
    stop: asyncio.Event | None = None,
    clock: clocks.Clock | None = None,
    on_joined: Callable[[], None] | None = None,
) -> api.EndReason | None:
    """Run until the session ends; returns why (None when asked to stop)."""
    clock = clock if clock is not None else clocks.LoopClock()
    stop = stop if stop is not None else asyncio.Event()
    transport.add_data_listener(pipeline.feed)
    pipeline.set_send(transport.send)
    if reporter is not None:
        reporter.start()
    reason: api.EndReason | None = None
    ended_atask: asyncio.Task[api.EndReason] | None = None
    stop_atask: asyncio.Task[Any] | None = None
    stopped = False
    try:
        await pipeline.start()
        try:
            await transport.join(audio_track=pipeline.audio_track, video_track=pipeline.video_track)
        except JoinError as exc:
            reason = api.EndReason.ERROR
            logger.error("join failed", extra={"error": str(exc)})
            raise
        joined_at = clock.now()
        if on_joined is not None:
            on_joined()
        if reporter is not None:
            reporter.joined()
        logger.info("session joined", extra={"participant": participant_id})
        ended_atask = asyncio.create_task(transport.wait_ended(), name="room-ended")
        stop_atask = asyncio.create_task(stop.wait(), name="stop")
        while True:
            done, _ = await asyncio.wait({ended_atask, stop_atask}, timeout=SNAPSHOT_INTERVAL)
            if stop_atask in done:  # first: a stop also closes what the room's end waits on
                logger.info("stop requested")
                stopped = True
                break
            if ended_atask in done:
                reason = ended_atask.result()
                break
            if reporter is not None:
                _report(reporter, pipeline)
            if idle_timeout > 0:
                last = pipeline.last_audio_at or joined_at
                if clocks.reached(clock.now(), last + idle_timeout):
                    reason = api.EndReason.IDLE_TIMEOUT
                    logger.info("idle timeout", extra={"idle_timeout_s": idle_timeout})
                    break
    finally:
        for task in (ended_atask, stop_atask):
            if task is not None and not task.done():
                task.cancel()
        if reporter is not None:
            _report(reporter, pipeline)
            if not stopped:  # stopped: the Pod is going, and only the operator knows why
                reporter.ended(reason)
        await pipeline.aclose()
        await transport.aclose()
        if reporter is not None:
            await reporter.aclose()
    logger.info("session ended", extra={"reason": reason.value if reason else None})
    return reason


def _report(reporter: StatusReporter, pipeline: AvatarPipeline) -> None:
    snap = pipeline.snapshot()
    reporter.playback(
        speaking=snap.speaking,
        segments=snap.segments,
        interrupts=snap.interrupts,
        position=snap.position,
        last_activity_at=snap.last_activity_at,
        fps=snap.fps,
        vram_used_mib=snap.vram_used_mib,
        sync_error_ms=snap.sync_error_ms,
    )
