"""The visualizer: cheap, alive in silence, and visibly driven by the audio."""

from __future__ import annotations

import itertools
from collections.abc import Callable

import numpy as np
import pytest
import renderer_support as rs

from avatar_worker.renderers import contract
from avatar_worker.renderers.waveform import WaveformRenderer

MakeConfig = Callable[..., contract.RenderConfig]


@pytest.mark.parametrize(("width", "height"), [(512, 512), (640, 360), (64, 64)])
def test_frames_have_the_configured_shape_and_dtype(
    make_config: MakeConfig, width: int, height: int
) -> None:
    frames = WaveformRenderer(make_config(width, height)).render(rs.speech_like(0.3).windows)
    assert frames.shape == (9, height, width, 3) and frames.dtype == np.uint8


def lit(frames: rs.Frames) -> np.ndarray:
    return np.asarray((rs.luminance(frames) > 80).sum(axis=(1, 2)))


def test_bars_and_ring_grow_with_the_audio(make_config: MakeConfig) -> None:
    speech = rs.speech_like(3.0, seed=3)
    frames = WaveformRenderer(make_config()).render(speech.windows)
    loud = speech.envelope > 0.6 * speech.envelope.max()
    gaps = speech.envelope == 0
    before = lit(frames[:3]).mean()  # silence before the first syllable
    # Bars fall back over ~0.2 s, so the short gaps between syllables are dimmer, not dark.
    assert lit(frames[loud]).mean() > 1.3 * lit(frames[gaps]).mean() > 1.3 * before
    assert lit(frames[loud]).mean() > 4 * before
    assert np.corrcoef(lit(frames), speech.envelope)[0, 1] > 0.5  # measured 0.73


def test_silence_still_moves(make_config: MakeConfig) -> None:
    frames = WaveformRenderer(make_config()).render(rs.silence(20))
    assert lit(frames).min() > 0  # the ring is there
    assert all(not np.array_equal(a, b) for a, b in itertools.pairwise(frames))


def test_deterministic_and_reset_drops_the_bars(make_config: MakeConfig) -> None:
    audio = rs.speech_like(1.0, seed=5, level=0.5).windows
    a, b = WaveformRenderer(make_config()), WaveformRenderer(make_config())
    assert np.array_equal(a.render(audio), b.render(audio))
    a.reset()
    fresh = WaveformRenderer(make_config())
    fresh.render(rs.silence(len(audio)))
    assert np.array_equal(a.render(rs.silence(1)), fresh.render(rs.silence(1)))
