"""Builders for renderer tests: speech-like audio and measurements on frames."""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt

SAMPLE_RATE = 24_000
FPS = 30
SPF = SAMPLE_RATE // FPS  # 800 samples per frame

Audio = npt.NDArray[np.float32]
Frames = npt.NDArray[np.uint8]


class Speech(NamedTuple):
    """Syllable-like audio cut into frame windows, and which frames are voiced."""

    windows: Audio  # [N, SPF]
    envelope: npt.NDArray[np.float64]  # [N] amplitude envelope (0 in the gaps)


def speech_like(seconds: float, seed: int = 0, level: float = 0.3) -> Speech:
    """Bursts of 120–260 ms of a voiced, vowel-like sound, separated by 80–220 ms of silence.

    Each burst is a 110–220 Hz harmonic series through two formant-like peaks that change from
    syllable to syllable, with a raised-cosine envelope: close enough to speech for loudness and
    spectral shape, and exactly reproducible.
    """
    rng = np.random.default_rng(seed)
    n = round(seconds * FPS) * SPF
    t = np.arange(n) / SAMPLE_RATE
    signal = np.zeros(n)
    envelope = np.zeros(n)
    pos = int(0.1 * SAMPLE_RATE)
    while pos < n:
        length = int(rng.uniform(0.12, 0.26) * SAMPLE_RATE)
        end = min(n, pos + length)
        f0 = rng.uniform(110, 220)
        f1, f2 = rng.uniform(300, 850), rng.uniform(900, 2400)
        seg = t[pos:end]
        tone = np.zeros_like(seg)
        for k in range(1, 30):
            fk = k * f0
            if fk > 5000:
                break
            gain = np.exp(-(((fk - f1) / 180) ** 2)) + 0.6 * np.exp(-(((fk - f2) / 250) ** 2))
            tone += (gain + 0.02) * np.sin(2 * np.pi * fk * seg)
        shape = np.sin(np.pi * np.linspace(0, 1, end - pos)) ** 0.7
        tone *= level * shape / max(1e-9, np.max(np.abs(tone)))
        signal[pos:end] = tone
        envelope[pos:end] = level * shape
        pos = end + int(rng.uniform(0.08, 0.22) * SAMPLE_RATE)
    windows = signal.astype(np.float32).reshape(-1, SPF)
    return Speech(windows, envelope.reshape(-1, SPF).mean(axis=1))


def silence(frames: int) -> Audio:
    return np.zeros((frames, SPF), np.float32)


def luminance(frames: Frames) -> npt.NDArray[np.float32]:
    weights = np.array([0.299, 0.587, 0.114], np.float32)
    return np.asarray(frames.astype(np.float32) @ weights, np.float32)


def _crop(frames: Frames, x0: float, y0: float, x1: float, y1: float) -> Frames:
    h, w = frames.shape[1:3]
    xa, ya = max(0, int(x0)), max(0, int(y0))
    xb, yb = min(w, int(np.ceil(x1))), min(h, int(np.ceil(y1)))
    return frames[:, ya:yb, xa:xb]


def mouth_opening(frames: Frames, mouth: Any) -> npt.NDArray[np.int64]:
    """Per frame, how many pixels around the lips are as dark as the inside of a mouth.

    The closed lips of a portrait are red, not near-black (the built-in one's darkest seam
    pixels sit above a luminance of 50); the inside of an open mouth is near-black. The box
    reaches below the lips by half the mouth's width, as far as the jaw can drop.
    """
    region = _crop(frames, mouth.x0 - 4, mouth.y0 - 6, mouth.x1 + 4, mouth.y1 + 0.5 * mouth.w)
    return np.asarray((luminance(region) < 45).sum(axis=(1, 2)), np.int64)


def eye_whites(frames: Frames, eye: Any) -> npt.NDArray[np.int64]:
    """Per frame, how many bright, unsaturated (sclera) pixels the eye box shows."""
    region = _crop(frames, eye.x0 - 3, eye.y0 - 3, eye.x1 + 3, eye.y1 + 3).astype(np.int16)
    spread = region.max(axis=-1) - region.min(axis=-1)
    bright = (luminance(region.astype(np.uint8)) > 225) & (spread < 25)
    return np.asarray(bright.sum(axis=(1, 2)), np.int64)
