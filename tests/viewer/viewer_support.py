"""The viewer tests' browser: the system's Chromium through Playwright, or a skip saying why.

Imported by the tests as `viewer_support` (a unique name: test folders have no __init__.py).

Chromium's flags beyond the usual headless set: `--allow-loopback-in-peer-connection` (Chromium
leaves loopback out of its ICE candidates; the room is on 127.0.0.1, without STUN),
`--disable-features=WebRtcHideLocalIpsWithMdns` (host candidates as addresses, not .local
names, which aioice would have to resolve) and `--autoplay-policy=no-user-gesture-required`
(the page plays the avatar with sound, as after a user's click).
"""

from __future__ import annotations

import contextlib
import queue
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import pytest

ROOM = "room-1"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--allow-loopback-in-peer-connection",
    "--disable-features=WebRtcHideLocalIpsWithMdns",
    "--autoplay-policy=no-user-gesture-required",
]


def require_browser() -> Any:
    """Playwright's `sync_playwright`, or skip (a test, or a whole module when called at its
    top): no Chromium, or no Playwright."""
    if not CHROMIUM.exists():
        pytest.skip(
            f"no Chromium at {CHROMIUM} (Debian: apt-get install chromium chromium-driver)",
            allow_module_level=True,
        )
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip(
            "Playwright for Python is not installed (the dev extra has it)",
            allow_module_level=True,
        )
    return sync_playwright


@contextlib.contextmanager
def open_page(sync_playwright: Any, url: str) -> Iterator[Any]:
    """The page at `url` in a fresh headless Chromium, once WebRTC is up and video decoded."""
    profile = tempfile.mkdtemp(prefix="viewer-chromium-")
    try:
        with sync_playwright() as playwright:
            context = playwright.chromium.launch_persistent_context(
                profile,
                executable_path=str(CHROMIUM),
                headless=True,
                args=CHROMIUM_ARGS,
                viewport={"width": 1280, "height": 640},
            )
            try:
                page = context.new_page()
                page.goto(url)
                page.wait_for_function(
                    "avatarViewer.connection() === 'connected'"
                    " && (avatarViewer.figures().framesDecoded || 0) > 0",
                    timeout=30_000,
                )
                yield page
            finally:
                context.close()
    finally:
        shutil.rmtree(profile, ignore_errors=True)


class Lines:
    """A process's output lines, read by a thread, so a test waits for one with a timeout."""

    def __init__(self, stream: IO[str]) -> None:
        self._lines: queue.Queue[str | None] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._read, args=(stream,), daemon=True).start()

    def _read(self, stream: IO[str]) -> None:
        for line in stream:
            self._lines.put(line)
        self._lines.put(None)

    def wait_for(self, pattern: str, timeout_s: float) -> re.Match[str]:
        deadline = time.monotonic() + timeout_s
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = self._lines.get(timeout=left)
            except queue.Empty:
                break
            if line is None:
                break
            self.seen.append(line)
            if match := re.search(pattern, line):
                return match
        raise AssertionError(f"no line matching {pattern!r} in:\n{''.join(self.seen)}")

    def rest(self) -> str:
        """What is left once the process has exited."""
        out = []
        while (line := self._lines.get(timeout=10)) is not None:
            out.append(line)
        return "".join(out)
