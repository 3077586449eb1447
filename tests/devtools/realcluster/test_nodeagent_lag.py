"""The node agent says when something blocked its event loop (every Pod's probes, starts and
proxied connections wait meanwhile)."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest

from avatar_devtools.realcluster import nodeagent


async def test_a_held_loop_is_logged_and_a_free_one_is_not(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger=nodeagent.logger.name)
    watchdog = asyncio.ensure_future(nodeagent.watch_loop_lag(check_s=0.02, warn_s=0.3))
    try:
        await asyncio.sleep(0.1)  # free: the watchdog wakes on time
        assert not caplog.records
        await asyncio.sleep(0.03)
        time.sleep(0.8)  # noqa: ASYNC251 - what the watchdog is for: a call that blocks the loop
        await asyncio.sleep(0.1)
    finally:
        watchdog.cancel()
    (record,) = caplog.records
    assert "event loop was held for" in record.getMessage()
