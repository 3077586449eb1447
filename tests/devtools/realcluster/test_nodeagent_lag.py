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
    watchdog = asyncio.ensure_future(nodeagent.watch_loop_lag(check_s=0.02, warn_s=0.5))
    try:
        await asyncio.sleep(0.1)  # free: the watchdog wakes on time
        assert not [r for r in caplog.records if r.name == nodeagent.logger.name]
        await asyncio.sleep(0.03)
        time.sleep(1.5)  # noqa: ASYNC251 - what the watchdog is for: a call that blocks the loop
        await asyncio.sleep(0.1)
    finally:
        watchdog.cancel()
    held = [r.getMessage() for r in caplog.records if "event loop was held" in r.getMessage()]
    assert held, caplog.records
    assert any(float(m.split("held for ")[1].split()[0]) >= 1.0 for m in held), held
