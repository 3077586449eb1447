"""Times on the virtual-time loop: deadlines a float's noise away from now are reached.

On a virtual-time loop time moves only when the loop would block; asyncio fires a timer due
within its clock resolution without moving it. A deadline compared as raw floats can then sit
10.000000000000104 ms away forever while the code re-arms a 1e-13 s timeout: the loop spins.
The worker compares times in whole ticks (`avatar_worker.clock`) instead.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from avatar_worker import clock as clocks

_SCENARIO = textwrap.dedent(
    """
    import asyncio, sys
    sys.path.insert(0, sys.argv[1])
    from worker_support import Harness, run_virtual, signal
    from avatar_sdk import protocol

    async def main():
        async with Harness() as h:
            framer = protocol.SegmentFramer(24_000, 1)
            for chunk in framer.audio(signal(480)):
                h.feed(chunk)
            await asyncio.sleep(0.05)
            h.feed(protocol.encode_interrupt(), protocol.RELIABLE)
            await asyncio.sleep(0.01)
            h.feed(signal(480, 5000))
            await asyncio.sleep(0.05)
            h.feed(signal(480, 6000))
            await asyncio.sleep(1.0)
        return h

    h = run_virtual(main())
    print(len(h.audio), h.pcm().tolist().count(6000))
    """
)


def test_framed_chunk_interrupt_and_stock_chunks_do_not_spin_the_render_loop() -> None:
    """The issue's sequence: a framed chunk, INTERRUPT 50 ms later, stock chunks 10 ms and
    60 ms after it. It ran forever on a 10.000000000000104 ms vs 10 ms comparison."""
    try:
        result = subprocess.run(
            [sys.executable, "-c", _SCENARIO, str(Path(__file__).parent)],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    except subprocess.TimeoutExpired:
        pytest.fail("the virtual-time loop spun: one second of media did not finish in 30 s")
    assert result.returncode == 0, result.stderr
    frames, first_sample_of_reply = result.stdout.split()
    assert int(frames) >= 50  # a second and more of 20 ms audio frames left the track
    assert int(first_sample_of_reply) == 1  # the reply played, from its first sample


@pytest.mark.parametrize(
    ("now", "deadline", "reached"),
    [
        (1000.1099999999999, 1000.12 - 0.010, True),  # float noise: the same moment
        (1000.0, 1000.0 + 1e-13, True),
        (1000.0, 1000.0 - 5.0, True),
        (1000.0, 1000.0 + 2e-6, False),
        (0.0, 0.010000000000000104, False),
    ],
)
def test_deadlines_are_compared_in_whole_ticks(now: float, deadline: float, reached: bool) -> None:
    assert clocks.reached(now, deadline) is reached


def test_a_wait_for_an_unreached_deadline_is_at_least_one_tick() -> None:
    # Anything shorter could fire without virtual time moving, and the deadline would stay
    # unreached: the wait must move the clock to where the comparison agrees.
    assert clocks.remaining(1000.0, 1000.0 + 0.6e-6) >= clocks.TICK
    assert clocks.remaining(1000.0, 1000.0 + 1e-13) == 0.0
    assert clocks.remaining(1000.0, 999.0) == 0.0
    assert clocks.ticks(0.010000000000000104) == clocks.ticks(0.010)
