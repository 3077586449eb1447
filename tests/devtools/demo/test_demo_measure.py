"""The demo's figures, from a viewer log whose timing is known."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from avatar_devtools.demo import measure, speech
from avatar_worker.transports.viewer import ViewerLog

RATE = 24_000
FRAME = 480  # 20 ms audio frames
SPF = 800  # samples per video frame at 30 fps


def viewer_log(video_late: float, *, silent_from: int | None = None) -> ViewerLog:
    """One second: audio frames arriving on time, video frames `video_late` s after them."""
    log = ViewerLog()
    for index in range(RATE // FRAME):
        pts = index * FRAME
        value = 0 if silent_from is not None and pts >= silent_from else 1000
        samples = np.full((FRAME, 1), value, dtype=np.int16)
        log.audio.append((pts, 10.0 + pts / RATE, samples))
    for index in range(30):
        sample = index * SPF
        log.video.append((sample * 90_000 // RATE, 10.0 + sample / RATE + video_late, 100.0))
    return log


@pytest.mark.parametrize("late", [0.0, 0.025, -0.010])
def test_av_offset_is_video_arrival_against_its_audio(late: float) -> None:
    offset = measure.av_offset(viewer_log(late), RATE)
    assert offset is not None
    assert offset.median_ms == pytest.approx(late * 1000, abs=0.1)
    assert offset.p95_abs_ms == pytest.approx(abs(late) * 1000, abs=0.1)
    assert offset.frames == 30


def test_no_offset_without_audio_or_video() -> None:
    assert measure.av_offset(ViewerLog(), RATE) is None


def test_silence_after_an_interrupt_is_the_end_of_the_last_sound() -> None:
    log = viewer_log(0.0, silent_from=12_000)  # the sound stops at 0.5 s (10.5 on the clock)
    assert measure.silence_after(log, RATE, 10.48, 10.9) == pytest.approx(0.02, abs=1e-3)
    assert measure.silence_after(log, RATE, 10.6, 10.9) == 0.0  # already silent
    assert measure.received_seconds(log, RATE) == pytest.approx(1.0)


def test_speech_falls_back_to_the_example_wav_without_espeak(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(speech.shutil, "which", lambda _: None)
    words = speech.prepare(tmp_path, sample_rate=RATE, max_seconds=3.0)
    assert "espeak-ng is not installed" in words.source
    assert speech.seconds_of(words.first, RATE) == pytest.approx(3.0)
    assert speech.seconds_of(words.reply, RATE) == pytest.approx(speech.REPLY_FALLBACK_SECONDS)
