"""`make demo DEMO_ARGS=--serve`: the demo prints the viewer's address, keeps its room open
after the script, shows the AvatarSession's own status on the page's events, lets the page
speak as the demo's agent, and ends cleanly — nothing left behind — on Ctrl-C (SIGINT).
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from viewer_support import Lines, open_page, require_browser

pytestmark = pytest.mark.slow

STAGE_TIMEOUT_S = 90.0  # each step; the worker's start imports torch on a loaded machine


def _status(url: str) -> dict[str, Any]:
    """The first status event of the demo room."""
    with urllib.request.urlopen(url + "viewer/api/rooms/demo-room/events", timeout=10) as events:
        for raw in events:
            if raw.startswith(b"data: "):
                snapshot: dict[str, Any] = json.loads(raw[6:])
                return snapshot
    raise AssertionError("no status event")


def _until(url: str, predicate: Any, what: str) -> None:
    """Until the session's status (reported at most once a second) satisfies `predicate`."""
    deadline = time.monotonic() + STAGE_TIMEOUT_S
    while not predicate(status := _status(url)):
        assert time.monotonic() < deadline, f"{what}: not in the status {status}"
        time.sleep(0.5)


def _post(url: str, body: dict[str, Any]) -> Any:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.load(response)


def test_the_demo_serves_the_viewer_until_ctrl_c(repo_root: Path, tmp_path: Path) -> None:
    try:
        browser = require_browser()
    except pytest.skip.Exception:
        browser = None  # the page's API is checked all the same
    command = [sys.executable, "-m", "avatar_devtools.demo", "--serve", "--port", "0"]
    command += ["--no-live", "--duration", "2", "--size", "256", "--out", str(tmp_path / "d.mp4")]
    demo = subprocess.Popen(
        command, cwd=repo_root, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    assert demo.stdout is not None
    lines = Lines(demo.stdout)
    try:
        url = lines.wait_for(r"^viewer: (http://127\.0\.0\.1:\d+/)$", STAGE_TIMEOUT_S).group(1)
        lines.wait_for(r"Ctrl-C ends the demo", STAGE_TIMEOUT_S)
        with urllib.request.urlopen(url + "viewer/api/rooms", timeout=10) as response:
            listing = json.load(response)
        assert [r["roomId"] for r in listing["rooms"]] == ["demo-room"]
        assert "hello.wav" in listing["wavs"]
        status = _status(url)
        assert status["source"] == "session"  # the AvatarSession's, as the agent's watch sees it
        assert (status["phase"], status["node"]) == ("Joined", "h100-0")
        _until(url, lambda s: s["playback"]["segments"] == 2, "the scripted turns")
        if browser is not None:  # the page plays the demo's avatar and shows its session
            with open_page(browser, url) as page:
                page.wait_for_function(
                    "document.getElementById('s-placement').textContent.startsWith('h100-0')",
                    timeout=10_000,
                )
                assert page.text_content("#s-source") == "the AvatarSession status"
        answer = _post(url + "viewer/api/rooms/demo-room/speak", {"wav": "hello.wav"})
        assert answer["seconds"] > 5
        time.sleep(1.0)
        _post(url + "viewer/api/rooms/demo-room/interrupt", {})
        # the script's barge in, then the page's
        _until(url, lambda s: s["playback"]["interrupts"] == 2, "the page's barge in")
        demo.send_signal(signal.SIGINT)
        demo.wait(STAGE_TIMEOUT_S)
        rest = lines.rest()
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait()
    text = "".join(lines.seen) + rest
    assert demo.returncode == 0, text
    assert "demo ok in" in text
    assert "Ended (AgentLeft), then deleted by the agent" in text
