"""Audio windows → mouth shapes: loudness opens, spectrum shapes, smoothing, silence closes."""

from __future__ import annotations

import numpy as np
import renderer_support as rs

from avatar_worker.renderers import features


def tone(freqs: list[float], level: float = 0.3, frames: int = 10) -> rs.Audio:
    t = np.arange(frames * rs.SPF) / rs.SAMPLE_RATE
    signal = sum(np.sin(2 * np.pi * f * t) for f in freqs)
    signal = level * signal / np.max(np.abs(signal))
    return signal.astype(np.float32).reshape(frames, rs.SPF)


def targets(audio: rs.Audio) -> features.Targets:
    return features.analyse(audio, rs.SAMPLE_RATE)


def test_silence_gives_a_closed_neutral_mouth() -> None:
    shapes = targets(rs.silence(4))
    for value in shapes:
        assert np.count_nonzero(value) == 0


def test_louder_opens_wider() -> None:
    vowel = [150.0, 300.0, 750.0, 1200.0]
    quiet = targets(tone(vowel, level=0.02)).open.mean()
    loud = targets(tone(vowel, level=0.4)).open.mean()
    assert 0.0 < quiet < loud
    assert loud > 0.4


def test_spectral_shape_tells_spread_from_rounded_lips() -> None:
    ee = targets(tone([140.0, 280.0, 2300.0, 2600.0]))  # low F1, high F2: "ee", lips spread
    oo = targets(tone([140.0, 280.0, 320.0, 800.0]))  # low F1, low F2: "oo", lips rounded
    assert ee.wide.mean() > ee.round.mean()
    assert oo.round.mean() > oo.wide.mean()
    aa = targets(tone([140.0, 700.0, 800.0, 1200.0]))  # high F1: "a", jaw open
    assert aa.open.mean() > oo.open.mean()


def test_hiss_opens_less_than_a_vowel_at_the_same_loudness() -> None:
    rng = np.random.default_rng(0)
    noise = rng.standard_normal(10 * rs.SPF)
    hiss = np.diff(noise, n=2, prepend=[0.0, 0.0])  # high-passed: an "s"
    hiss = (0.3 * hiss / np.sqrt(np.mean(hiss**2)) / np.sqrt(2)).astype(np.float32)
    vowel = tone([150.0, 700.0, 1100.0])
    assert targets(hiss.reshape(10, rs.SPF)).open.mean() < targets(vowel).open.mean()


def test_follower_opens_faster_than_it_closes_and_snaps_shut() -> None:
    tracker = features.MouthTracker(rs.SAMPLE_RATE, rs.FPS)
    audio = np.concatenate([tone([150.0, 700.0], frames=6), rs.silence(12)])
    shapes = tracker(audio)
    target = float(targets(audio[:6]).open[-1])
    assert shapes.open[0] > 0.5 * target  # most of the way in one frame (30 ms attack)
    closing = shapes.open[6:]
    assert closing[0] > 0.2 * shapes.open[5]  # not all the way shut in one frame
    assert (np.diff(closing) <= 0).all()
    assert closing[-1] == 0.0  # and exactly shut, not merely small, once silent long enough


def test_batching_does_not_change_the_shapes() -> None:
    audio = rs.speech_like(1.0, seed=2).windows
    whole = features.MouthTracker(rs.SAMPLE_RATE, rs.FPS)(audio)
    split_tracker = features.MouthTracker(rs.SAMPLE_RATE, rs.FPS)
    parts = [split_tracker(audio[a : a + 4]) for a in range(0, len(audio), 4)]
    for i, field in enumerate(whole):
        np.testing.assert_allclose(field, np.concatenate([p[i] for p in parts]), atol=1e-6)


def test_reset_closes_the_mouth_at_once_and_lets_the_head_settle() -> None:
    tracker = features.MouthTracker(rs.SAMPLE_RATE, rs.FPS)
    before = tracker(tone([150.0, 700.0], frames=5))
    tracker.reset()
    after = tracker(rs.silence(1))
    assert after.open[0] == after.wide[0] == after.round[0] == 0.0
    assert 0.0 < after.energy[0] < before.energy[-1]  # decays: no jump of the head
