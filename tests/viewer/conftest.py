"""Fixtures for the viewer page's tests: a room server with a worker, and a real browser.

`served_room` runs what a user runs: `avatar-worker room --serve --port 0` (its `viewer:` line
gives the page's address) and one `avatar-worker run` worker in room `room-1`, both as their
own processes. `viewer_page` opens the page in headless Chromium — the system's own
(`/usr/bin/chromium`, Debian's `chromium` package) driven by Playwright, never a downloaded
one — and waits until the WebRTC connection is up and video is decoded. Without Chromium or
Playwright the browser tests are skipped with one line saying why (`viewer_support`).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import pytest

# The helpers module sits beside this file; make it importable under every import mode.
sys.path.insert(0, str(Path(__file__).parent))
from viewer_support import ROOM, Lines, open_page, require_browser

AGENT = "agent"
START_TIMEOUT_S = 60.0  # the worker imports torch: seconds on a loaded 2-core machine


class ServedRoom(NamedTuple):
    url: str  # the page
    port: int
    room: subprocess.Popen[str]
    worker: subprocess.Popen[bytes]


def _get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.load(response)


def _avatar_in_room(url: str) -> bool:
    try:
        rooms = _get_json(url + "viewer/api/rooms")["rooms"]
    except OSError:
        return False
    return any(r["roomId"] == ROOM and "avatar" in r["participants"] for r in rooms)


@pytest.fixture(scope="module")
def served_room(repo_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServedRoom]:
    logs = tmp_path_factory.mktemp("served-room")
    room = subprocess.Popen(
        [sys.executable, "-m", "avatar_worker", "room", "--serve", "--port", "0"],
        cwd=repo_root,  # the page offers ./examples/*.wav
        stdout=subprocess.PIPE,
        stderr=(logs / "room.log").open("w"),
        text=True,
    )
    assert room.stdout is not None
    try:
        match = Lines(room.stdout).wait_for(r"^viewer: (http://127\.0\.0\.1:(\d+)/)$", 30)
    except AssertionError as exc:
        room.kill()
        pytest.fail(f"avatar-worker room --serve: {exc}\n{(logs / 'room.log').read_text()}")
    url, port = match.group(1), int(match.group(2))
    env = {
        **os.environ,
        "AVATAR_SESSION_NAME": "viewer-test",
        "AVATAR_ROOM_ID": ROOM,
        "AVATAR_PARTICIPANT_ID": "avatar",
        "AVATAR_AGENT_PARTICIPANT_ID": AGENT,
        "AVATAR_TRANSPORT": "local",
        "AVATAR_LOCAL_ROOM_URL": f"ws://127.0.0.1:{port}/rooms/{ROOM}",
        "AVATAR_STATUS_REPORTING": "none",
        "AVATAR_IDLE_TIMEOUT_SECONDS": "0",
    }
    worker = subprocess.Popen(
        [sys.executable, "-m", "avatar_worker", "run", "--health-port", "0"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=(logs / "worker.log").open("wb"),
    )
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not _avatar_in_room(url):
            if worker.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"the worker did not join: {(logs / 'worker.log').read_text()}")
            time.sleep(0.2)
        yield ServedRoom(url, port, room, worker)
    finally:
        for process in (worker, room):
            process.terminate()
        for process in (worker, room):
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@pytest.fixture(scope="module")
def viewer_page(request: pytest.FixtureRequest) -> Iterator[Any]:
    sync_playwright = require_browser()
    served_room: ServedRoom = request.getfixturevalue("served_room")
    with open_page(sync_playwright, served_room.url) as page:
        yield page
