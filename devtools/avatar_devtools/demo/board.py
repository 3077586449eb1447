"""The demo's live status table: what the agent's watch on its AvatarSession sees.

On a terminal the table and the latest events are redrawn in place (ANSI: cursor up, clear to
the end) a few times a second; otherwise (`--no-live`, CI logs, a pipe) each event is one line
and the table's row is printed whenever it changes — at most once a second while only the
playback position moves.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, TextIO

if TYPE_CHECKING:
    from avatar_sdk import api

COLUMNS = (
    ("TIME", 7),
    ("PHASE", 9),
    ("PLAYBACK", 9),
    ("SEGMENTS", 9),
    ("INTERRUPTS", 11),
    ("POSITION", 9),
    ("NODE", 8),
    ("GPU", 4),
    ("VRAM", 8),
    ("FPS", 6),
    ("POD", 10),
)
REDRAW_SECONDS = 0.25
PLAIN_POSITION_SECONDS = 1.0  # a row that differs only in its position, at most this often
EVENTS_SHOWN = 10


def _cell(value: object, width: int) -> str:
    text = "-" if value is None or value == "" else str(value)
    return text.ljust(width)


def row(cells: list[object]) -> str:
    return " ".join(_cell(v, w) for v, (_, w) in zip(cells, COLUMNS, strict=True)).rstrip()


def header() -> str:
    return row([name for name, _ in COLUMNS])


class StatusBoard:
    """Keeps the latest session and pod state, and the agent's events; draws them."""

    def __init__(
        self, out: TextIO, *, live: bool, pod_phase: Callable[[str], str | None] | None = None
    ) -> None:
        self._out = out
        self.live = live
        self.pod_phase = pod_phase or (lambda _: None)
        self._started = time.monotonic()
        self._session: api.AvatarSession | None = None
        self._events: list[str] = []
        self._drawn_lines = 0
        self._last_plain: tuple[object, ...] | None = None
        self._header_written = False
        self._last_plain_at = 0.0
        self._redraw_atask: asyncio.Task[None] | None = None

    def elapsed(self) -> float:
        return time.monotonic() - self._started

    # --- inputs ---------------------------------------------------------------------------

    def update(self, session: api.AvatarSession) -> None:
        self._session = session
        if not self.live:
            self._plain_row()

    def event(self, text: str) -> None:
        line = f"{self.elapsed():6.1f}s  {text}"
        self._events.append(line)
        if self.live:
            self.draw()
        else:
            self._out.write(f"  {line}\n")
            self._out.flush()

    # --- drawing --------------------------------------------------------------------------

    def cells(self) -> list[object]:
        session = self._session
        status = session.status if session is not None else None
        playback = status.playback if status is not None else None
        placement = status.placement if status is not None else None
        pod = status.pod_name if status is not None else None
        pod_phase = self.pod_phase(pod) if pod else None
        return [
            f"{self.elapsed():.1f}s",
            status.phase.value if status is not None and status.phase is not None else "<none>",
            playback.state.value if playback is not None else None,
            playback.segments if playback is not None else None,
            playback.interrupts if playback is not None else None,
            f"{playback.position:.2f}s" if playback is not None else None,
            placement.node if placement is not None else None,
            placement.gpu if placement is not None else None,
            f"{placement.vram_mib}Mi" if placement is not None else None,
            f"{status.fps:.1f}" if status is not None and status.fps is not None else None,
            pod_phase or ("gone" if pod and status and status.phase else None),
        ]

    def lines(self) -> list[str]:
        lines = [header(), row(self.cells()), ""]
        lines += [f"  {e}" for e in self._events[-EVENTS_SHOWN:]]
        return lines

    def draw(self) -> None:
        if not self.live:
            return
        text = ""
        if self._drawn_lines:
            text += f"\x1b[{self._drawn_lines}F\x1b[J"  # to the table's first line, clear below
        # lines wider than the terminal would wrap and throw the redraw off by their count
        width = shutil.get_terminal_size().columns - 1
        lines = [line[:width] for line in self.lines()]
        text += "\n".join(lines) + "\n"
        self._drawn_lines = len(lines)
        self._out.write(text)
        self._out.flush()

    def _plain_row(self) -> None:
        cells = self.cells()
        key = tuple(cells[1:5] + cells[6:9] + cells[10:])  # everything but time, position, fps
        now = time.monotonic()
        if key == self._last_plain and now - self._last_plain_at < PLAIN_POSITION_SECONDS:
            return
        if not self._header_written:
            self._header_written = True
            self._out.write(f"  {header()}\n")
        self._last_plain, self._last_plain_at = key, now
        self._out.write(f"  {row(cells)}\n")
        self._out.flush()

    async def _redraw(self) -> None:
        while True:
            self.draw()
            await asyncio.sleep(REDRAW_SECONDS)

    def start(self) -> None:
        if self.live and self._redraw_atask is None:
            self._redraw_atask = asyncio.create_task(self._redraw(), name="status-board")

    async def aclose(self) -> None:
        if self._redraw_atask is not None:
            self._redraw_atask.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._redraw_atask
            self._redraw_atask = None
        if self.live:
            self.draw()
        elif self._session is not None:
            self._last_plain = None  # the final state, whatever changed
            self._plain_row()

    def final_table(self) -> list[str]:
        return [header(), row(self.cells())]
