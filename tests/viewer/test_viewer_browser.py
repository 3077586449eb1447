"""The viewer page in a real browser: the avatar over WebRTC, its status, and the controls.

Everything is measured by the browser itself (getStats, the `<video>` element's pixels, a
WebAudio analyser on the received sound) through the page's `window.avatarViewer`. With
`AVATAR_VIEWER_OUT=DIR` the tests also write a screenshot of the page (`viewer.png`, taken
while the avatar speaks) and the figures they measured (`figures.json`) there — what the
README shows.
"""

from __future__ import annotations

import base64
import json
import os
import statistics
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt
import pytest
from viewer_support import require_browser

pytestmark = pytest.mark.slow
require_browser()  # or the module is skipped, in one line that says why

REFERENCE = Path(__file__).resolve().parents[2] / "worker-image/avatar_worker/assets/portrait.png"
MOUTH_BOX = (205, 325, 307, 390)  # x0, y0, x1, y1: the portrait's mouth and jaw, with margin
BARGE_INS = 3
SPEECH_WITHOUT_PAUSES_FROM_S = 2.3  # hello.wav: no pause of 0.15 s or more from 1.9 s to 5.2 s
FIGURES: dict[str, Any] = {}


def _out_dir() -> Path | None:
    out = os.environ.get("AVATAR_VIEWER_OUT")
    if not out:
        return None
    path = Path(out)
    path.mkdir(parents=True, exist_ok=True)
    return path


def _record(**figures: Any) -> None:
    FIGURES.update(figures)
    out = _out_dir()
    if out is not None:
        (out / "figures.json").write_text(json.dumps(FIGURES, indent=2, sort_keys=True) + "\n")


def _frame(page: Any) -> npt.NDArray[np.uint8]:
    """The picture the `<video>` element shows now, as BGR."""
    data_url: str = page.evaluate("avatarViewer.frame()")
    raw = np.frombuffer(base64.b64decode(data_url.split(",", 1)[1]), np.uint8)
    image = cv2.imdecode(raw, cv2.IMREAD_COLOR)
    assert image is not None, "the page gave no picture"
    return np.asarray(image, np.uint8)


def _mouth(image: npt.NDArray[np.uint8]) -> npt.NDArray[np.float32]:
    x0, y0, x1, y1 = MOUTH_BOX
    gray = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
    return np.asarray(gray[y0:y1, x0:x1], np.float32)


def _speak(page: Any) -> None:
    page.select_option("#wav", "hello.wav")
    page.click("#speak")


def _wait_playback(page: Any, state: str, timeout_s: float) -> None:
    page.wait_for_function(
        f"document.getElementById('s-playback').textContent === '{state}'",
        timeout=timeout_s * 1000,
    )


def test_video_arrives_at_25_frames_per_second_with_audio(viewer_page: Any) -> None:
    page = viewer_page
    first = page.evaluate("avatarViewer.videoCounters()")  # getStats now, stamped in the page
    first_audio = page.evaluate("avatarViewer.audioCounters()")
    time.sleep(3.0)
    last = page.evaluate("avatarViewer.videoCounters()")
    last_audio = page.evaluate("avatarViewer.audioCounters()")
    seconds = (last["at"] - first["at"]) / 1000
    fps = (last["framesDecoded"] - first["framesDecoded"]) / seconds
    audio_s = (last_audio["samples"] - first_audio["samples"]) / 48_000
    figures = page.evaluate("avatarViewer.figures()")
    _record(
        frames_decoded_per_s=round(fps, 1),
        audio_received_s_per_s=round(audio_s / seconds, 2),
        # just after joining: Chromium's lip sync has not converged yet (see the barge-in test)
        joining_video_jitter_buffer_ms=figures["videoJitterBufferMs"],
        joining_audio_jitter_buffer_ms=figures["audioJitterBufferMs"],
        joining_av_offset_ms=figures["avOffsetMs"],
        packets_lost=figures["packetsLost"],
        video_element_dropped_frames=[
            figures["videoElementDropped"],
            figures["videoElementFrames"],
        ],
    )
    assert fps >= 25, f"{fps:.1f} frames decoded per second over {seconds:.1f} s"
    assert audio_s > 0, "no audio received"
    assert (figures["width"], figures["height"]) == (512, 512)


def test_the_avatars_face_is_visible(viewer_page: Any) -> None:
    page = viewer_page
    image = _frame(page)
    reference = cv2.imread(str(REFERENCE), cv2.IMREAD_COLOR)
    assert image.shape == reference.shape
    gray = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY).astype(np.float32)
    expected = cv2.cvtColor(reference, cv2.COLOR_BGR2GRAY).astype(np.float32)
    small, small_expected = (
        cv2.resize(g, (128, 128), interpolation=cv2.INTER_AREA) for g in (gray, expected)
    )
    correlation = float(np.corrcoef(small.ravel(), small_expected.ravel())[0, 1])
    difference = float(np.abs(small - small_expected).mean())
    _record(face_correlation=round(correlation, 3), face_mean_abs_difference=round(difference, 1))
    assert gray.mean() > 40, f"the picture is dark (mean {gray.mean():.0f})"
    assert correlation > 0.9, f"the picture is not the avatar (correlation {correlation:.2f})"
    assert difference < 20, f"the picture differs from the avatar by {difference:.1f} levels"


def test_speaking_moves_the_mouth_and_the_panel_shows_speaking_then_idle(
    viewer_page: Any,
) -> None:
    page = viewer_page
    _wait_playback(page, "Idle", 20)
    idle = [_mouth(_frame(page)) for _ in range(6)]
    baseline = max(float(np.abs(m - idle[0]).mean()) for m in idle[1:])
    _speak(page)
    _wait_playback(page, "Speaking", 10)
    moved = []
    deadline = time.monotonic() + 2.0
    while time.monotonic() < deadline:
        moved.append(float(np.abs(_mouth(_frame(page)) - idle[0]).mean()))
    _record(
        mouth_difference_idle=round(baseline, 2), mouth_difference_speaking=round(max(moved), 2)
    )
    assert max(moved) > max(4 * baseline, 4.0), (
        f"the mouth box changed by {max(moved):.1f} levels while speaking, {baseline:.1f} idle"
    )
    _wait_playback(page, "Idle", 20)
    status = page.evaluate("avatarViewer.status()")
    assert status["acks"][-1]["interrupted"] is False


def _barge_in(page: Any, screenshot: Path | None = None) -> dict[str, Any]:
    """Speak, barge in on continuous speech; what the page measured."""
    _wait_playback(page, "Idle", 20)
    _speak(page)
    _wait_playback(page, "Speaking", 10)
    # hello.wav pauses for up to 0.3 s in its first 2 s: barge in on the continuous speech after
    time.sleep(SPEECH_WITHOUT_PAUSES_FROM_S)
    page.wait_for_function("avatarViewer.loudness() > 0.05", timeout=10_000)  # heard right now
    if screenshot is not None:  # the README's: speaking, with the acks of the turns before
        page.screenshot(path=str(screenshot))
    steady = page.evaluate("avatarViewer.figures()")  # the last second, while speaking
    before = page.evaluate("avatarViewer.bargeIn()?.clickedAt ?? null")
    page.click("#interrupt")
    page.wait_for_function(
        "(before) => avatarViewer.bargeIn()?.clickedAt !== before"
        " && avatarViewer.bargeIn().done === true",
        arg=before,
        timeout=10_000,
    )
    barge_in: dict[str, Any] = page.evaluate("avatarViewer.bargeIn()")
    for key in ("avOffsetMs", "audioJitterBufferMs", "videoJitterBufferMs"):
        barge_in[f"speaking_{key}"] = steady[key]
    barge_in["videoElementDropped"] = steady["videoElementDropped"]
    barge_in["videoElementFrames"] = steady["videoElementFrames"]
    barge_in["inRoomMs"] = page.evaluate("avatarViewer.status()")["bargeInToSilenceInRoomMs"]
    _wait_playback(page, "Idle", 10)
    barge_in["ack"] = page.evaluate("avatarViewer.status()")["acks"][-1]
    return barge_in


def test_barge_in_silences_the_audio_at_the_browser_within_100_ms(viewer_page: Any) -> None:
    """Three barge ins (one is a sample of a loaded machine's scheduling); their median holds."""
    out = _out_dir()
    runs = [_barge_in(viewer_page) for _ in range(BARGE_INS - 1)]
    runs.append(_barge_in(viewer_page, out / "viewer.png" if out is not None else None))

    def figures(key: str) -> list[float | None]:
        return [None if r.get(key) is None else round(r[key], 1) for r in runs]

    _record(
        barge_in_to_silence_arrived_ms=figures("arrivedMs"),
        barge_in_to_silence_heard_ms=figures("heardMs"),
        barge_in_audio_jitter_buffer_ms=figures("jitterBufferMs"),
        barge_in_to_silence_in_room_ms=figures("inRoomMs"),
        barge_in_request_answered_ms=figures("answeredMs"),
        speaking_av_offset_ms=figures("speaking_avOffsetMs"),
        speaking_video_element_dropped=[
            [r["videoElementDropped"], r["videoElementFrames"]] for r in runs
        ],
        speaking_audio_jitter_buffer_ms=figures("speaking_audioJitterBufferMs"),
        speaking_video_jitter_buffer_ms=figures("speaking_videoJitterBufferMs"),
    )
    for run in runs:
        assert run["loudAtClick"] > 0.001, "the avatar was not heard speaking just before the click"
        assert run["heardMs"] is not None, "the browser did not fall silent within 3 s"
        assert run["arrivedMs"] is not None, "no jitter-buffer delay for the silence"
        assert run["ack"]["interrupted"] is True
    arrived = statistics.median(r["arrivedMs"] for r in runs)
    assert arrived <= 100, f"silence arrived at the browser {arrived:.0f} ms after barge in"
