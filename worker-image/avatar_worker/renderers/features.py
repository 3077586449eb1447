"""From each frame's audio window to a mouth shape: how open, how wide, how rounded.

A viseme classifier would need a model; the mouth shapes that matter for a talking head can be
read off the window's loudness and the shape of its spectrum:

- open: loudness (RMS in dBFS, between a floor and a full level), more for open vowels, whose
  first formant is high ("a"), less for fricatives, whose energy sits above 3 kHz ("s", "f").
- wide: the second formant's region is high ("i", "e") — lips spread — or the sound is a
  sibilant (teeth together, lips apart).
- round: both formant regions are low ("o", "u") — lips rounded, mouth narrow.

All windows of a batch go through one `numpy.fft.rfft` and one matrix product (the band
sums). This is numpy, not torch: the arrays are a few frames of a few hundred samples, where
torch's cost per operation is most of the work (numpy does the same ~2.5× faster here).
Each shape then passes an attack/release follower (a one-pole filter that is fast when
the mouth opens and slower when it closes, with time constants in seconds, so the motion is the
same at any frame rate): lips snap open on an onset and relax between syllables instead of
chattering at the frame rate. That follower is the only state; it runs frame by frame, so the
result does not depend on how frames are batched, and `reset()` closes the mouth at once.
Silence (below the floor) drives every shape to zero, and a value that has decayed to almost
nothing snaps to exactly zero, so a silent avatar's mouth is exactly the reference image's.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float32]

FLOOR_DBFS = -50.0  # below this a window is silence: the mouth closes
FULL_DBFS = -10.0  # at this loudness the jaw is fully open (speech from TTS: ~-25…-15 dBFS)
ATTACK_S = 0.030  # 30 ms: lips open quickly on an onset
RELEASE_S = 0.075  # 75 ms: and close a little more slowly
ENERGY_ATTACK_S = 0.20  # the slow speech envelope that drives head motion
ENERGY_RELEASE_S = 0.60
SNAP = 0.01  # below this a shape is exactly zero

# Spectral bands (Hz): first-formant region, second-formant region, fricative noise.
_F1 = (250.0, 1000.0)
_F2 = (900.0, 3000.0)
_FRIC = 3000.0


class MouthShapes(NamedTuple):
    """Per-frame mouth shape, each float32 [N] in [0, 1]."""

    open: FloatArray  # jaw drop and lip opening
    wide: FloatArray  # lips spread
    round: FloatArray  # lips rounded (narrower)
    energy: FloatArray  # slow speech envelope (head motion while talking)


class Targets(NamedTuple):
    """Unsmoothed per-frame targets, float32 [N] each."""

    open: FloatArray
    wide: FloatArray
    round: FloatArray
    loud: FloatArray


@functools.lru_cache(maxsize=8)
def _spectral_weights(samples: int, sample_rate: int) -> tuple[FloatArray, FloatArray]:
    """The Hann window, and [bins, 5] weights that turn a power spectrum into band sums:
    Σf·P and ΣP over the first-formant band, the same over the second, ΣP above 3 kHz."""
    window = np.hanning(samples).astype(np.float32)
    freqs = np.fft.rfftfreq(samples, d=1.0 / sample_rate).astype(np.float32)

    def band(lo: float, hi: float) -> FloatArray:
        return ((freqs >= lo) & (freqs < hi)).astype(np.float32)

    f1, f2 = band(*_F1), band(*_F2)
    fric = band(_FRIC, sample_rate / 2 + 1)
    return window, np.stack([freqs * f1, f1, freqs * f2, f2, fric], axis=1)


def analyse(audio: npt.ArrayLike, sample_rate: int) -> Targets:
    """Mouth-shape targets for a batch of windows [N, S] (float, [-1, 1]) — no smoothing."""
    x = np.asarray(audio, dtype=np.float32)
    n, s = x.shape
    rms = np.sqrt(np.maximum(np.mean(np.square(x), axis=1), 1e-12))
    loud = np.clip((20.0 * np.log10(rms) - FLOOR_DBFS) / (FULL_DBFS - FLOOR_DBFS), 0.0, 1.0)
    loud = loud.astype(np.float32)
    if n == 0 or s < 8:
        zero = np.zeros(n, np.float32)
        return Targets(loud * np.float32(0.8), zero, zero, loud)

    window, weights = _spectral_weights(s, sample_rate)
    power = np.square(np.abs(np.fft.rfft(x * window, axis=1))).astype(np.float32)
    sums = power @ weights  # one product for every band sum of every window
    total = np.maximum(power.sum(axis=1), 1e-20)
    f1_hz = sums[:, 0] / np.maximum(sums[:, 1], 1e-20)  # spectral centroids within the bands
    f2_hz = sums[:, 2] / np.maximum(sums[:, 3], 1e-20)
    f1 = np.clip((f1_hz - 350.0) / 400.0, 0.0, 1.0)  # ~350 Hz closed … 750 Hz open
    f2 = np.clip((f2_hz - 1100.0) / 1000.0, 0.0, 1.0)  # back … front vowels
    fric = np.clip((sums[:, 4] / total - 0.12) / 0.45, 0.0, 1.0)
    voiced = np.minimum(loud * 2.0, 1.0)
    open_ = loud**1.5 * (0.55 + 0.45 * f1) * (1.0 - 0.45 * fric)
    wide = voiced * np.minimum(f2 * (1.0 - 0.5 * f1) + 0.5 * fric, 1.0)
    round_ = voiced * (1.0 - f2) * (1.0 - f1) * (1.0 - fric)
    return Targets(
        open_.astype(np.float32), wide.astype(np.float32), round_.astype(np.float32), loud
    )


def _coefficient(seconds: float, fps: float) -> float:
    """One-pole smoothing factor per frame for a time constant."""
    return 1.0 - math.exp(-1.0 / (max(seconds, 1e-6) * fps))


class MouthTracker:
    """Audio windows in, smoothed mouth shapes out, one call per batch of frames."""

    def __init__(self, sample_rate: int, fps: float) -> None:
        self.sample_rate = sample_rate
        self.fps = fps
        self._attack = _coefficient(ATTACK_S, fps)
        self._release = _coefficient(RELEASE_S, fps)
        self._energy_attack = _coefficient(ENERGY_ATTACK_S, fps)
        self._energy_release = _coefficient(ENERGY_RELEASE_S, fps)
        self._state = [0.0, 0.0, 0.0]  # open, wide, round
        self._energy = 0.0

    def reset(self) -> None:
        """Close the mouth now. The slow speech envelope is left to decay on its own: it only
        moves the head, and dropping it would make the head jump."""
        self._state = [0.0, 0.0, 0.0]

    def __call__(self, audio: FloatArray) -> MouthShapes:
        targets = analyse(audio, self.sample_rate)
        rows = np.stack([targets.open, targets.wide, targets.round, targets.loud], axis=1)
        n = rows.shape[0]
        out = np.zeros((4, n), np.float32)
        state = self._state
        energy = self._energy
        for i, (o, w, r, loud) in enumerate(rows.tolist()):
            for k, target in enumerate((o, w, r)):
                rate = self._attack if target > state[k] else self._release
                value = state[k] + (target - state[k]) * rate
                state[k] = value if value >= SNAP or target >= SNAP else 0.0
                out[k, i] = state[k]
            rate = self._energy_attack if loud > energy else self._energy_release
            energy += (loud - energy) * rate
            energy = energy if energy >= SNAP or loud >= SNAP else 0.0
            out[3, i] = energy
        self._energy = energy
        return MouthShapes(out[0], out[1], out[2], out[3])
