"""Stopping a container's process group as the kubelet does, for both emulated and real nodes.

A container runs as the leader of its own process group (`start_new_session`), so a signal to
the group reaches whatever the container started too."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal

KILL_WAIT_S = 5.0  # with no grace period: how long SIGKILL may take to be seen


async def terminate(process: asyncio.subprocess.Process, grace: float) -> None:
    """SIGTERM to the process group, SIGKILL after `grace` seconds (at once with 0), then
    SIGKILL to whatever the container left in its group."""
    if process.returncode is not None:
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGTERM if grace > 0 else signal.SIGKILL)
    try:
        async with asyncio.timeout(grace if grace > 0 else KILL_WAIT_S):
            await process.wait()
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)
        await process.wait()
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
