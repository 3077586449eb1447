"""Idle life: blinks at natural intervals and a head that is never quite still.

A still picture with a moving mouth looks like a puppet; a picture that freezes between turns
looks broken. People blink every few seconds (irregularly, sometimes twice in a row), each blink
lasting a fifth of a second (quick to close, slower to open), and a resting head drifts and
breathes by a pixel or two. This module produces those per-frame poses; the renderer turns them
into warps.

Everything is a function of the frame index and the seed: head motion is a sum of slow
sinusoids with seeded frequencies and phases, and the blink schedule is drawn from a seeded
generator as time advances. So a session is reproducible for a seed and does not depend on how
its frames were batched. Interrupting a turn (`reset`) does not touch this clock: idle life
continues without a jump. Speech energy (from `features`) only adds a little nodding and sway
while the avatar talks.

Units: head offsets are fractions of the face's height, roll is in radians, blink is 0 (open)
to 1 (closed). The renderer scales them to its frame.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float32]

BLINK_CLOSE_S = 0.075  # lids fall in 75 ms
BLINK_HOLD_S = 0.035  # stay shut for a moment
BLINK_OPEN_S = 0.14  # and rise more slowly
BLINK_MIN_GAP_S = 1.4  # shortest gap between separate blinks
BLINK_MEAN_EXTRA_S = 2.6  # mean of the (gamma-distributed) extra gap: ~4 s between blinks
DOUBLE_BLINK_P = 0.12  # a second blink follows shortly
FIRST_BLINK_S = (0.6, 2.2)  # the first blink comes soon after start

HEAD_SWAY = 0.0075  # of face height: a drift of ~2 px on a 260 px face
HEAD_BOB = 0.0045
HEAD_ROLL = 0.006  # radians (~0.35°)
BREATH_HZ = 0.23  # ~14 breaths a minute
BREATH = 0.0025
SPEECH_NOD = 0.006  # the head dips slightly on stressed syllables
SPEECH_SWAY_GAIN = 0.8  # and drifts more while talking


class IdlePoses(NamedTuple):
    """Per-frame idle pose, each float32 [N]."""

    blink: FloatArray  # 0 open … 1 closed
    head_x: FloatArray  # fraction of face height, + right
    head_y: FloatArray  # fraction of face height, + down
    roll: FloatArray  # radians, + clockwise in the image


def blink_profile(t: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """Lid closure at `t` seconds after a blink starts (0 outside the blink)."""
    close = np.clip(t / BLINK_CLOSE_S, 0.0, 1.0)
    closing = close * close  # accelerating fall
    rise = np.clip((t - BLINK_CLOSE_S - BLINK_HOLD_S) / BLINK_OPEN_S, 0.0, 1.0)
    opening = 1.0 - rise * rise * (3.0 - 2.0 * rise)
    value = np.where(t < BLINK_CLOSE_S, closing, opening)
    return np.where((t < 0.0) | (t > BLINK_CLOSE_S + BLINK_HOLD_S + BLINK_OPEN_S), 0.0, value)


class IdleMotion:
    """Blinks and head motion for consecutive frames, deterministic for a seed."""

    def __init__(self, fps: float, seed: int) -> None:
        self.fps = float(fps)
        self._rng = np.random.default_rng(np.random.PCG64(seed))
        # Three slow sinusoids per axis; their frequencies are not multiples of each other,
        # so the motion never visibly repeats.
        self._freqs = self._rng.uniform(0.05, 0.31, size=(3, 3))  # axis × component, Hz
        self._phases = self._rng.uniform(0.0, 2.0 * math.pi, size=(3, 3))
        self._weights = np.array([0.55, 0.3, 0.15])
        self._breath_phase = float(self._rng.uniform(0.0, 2.0 * math.pi))
        self._frame = 0
        self._blinks: list[float] = []  # start times (s) not yet over
        self._next_blink = float(self._rng.uniform(*FIRST_BLINK_S))

    @property
    def frame(self) -> int:
        """Index of the next frame."""
        return self._frame

    def _schedule_until(self, t_end: float) -> None:
        while self._next_blink <= t_end:
            start = self._next_blink
            self._blinks.append(start)
            gap = BLINK_MIN_GAP_S + float(self._rng.gamma(2.0, BLINK_MEAN_EXTRA_S / 2.0))
            if self._rng.random() < DOUBLE_BLINK_P:
                gap = float(self._rng.uniform(0.32, 0.45))
            self._next_blink = start + gap

    def step(self, n: int, energy: FloatArray | None = None) -> IdlePoses:
        """Poses for the next `n` frames; `energy` is the speech envelope for them (or None)."""
        idx = np.arange(self._frame, self._frame + n, dtype=np.float64)
        t = idx / self.fps
        self._frame += n
        if n == 0:
            empty = np.zeros(0, np.float32)
            return IdlePoses(empty, empty, empty, empty)

        self._schedule_until(float(t[-1]))
        blink = np.zeros(n)
        for start in self._blinks:
            blink = np.maximum(blink, blink_profile(t - start))
        horizon = float(t[-1]) - (BLINK_CLOSE_S + BLINK_HOLD_S + BLINK_OPEN_S)
        self._blinks = [s for s in self._blinks if s > horizon]

        waves = np.sin(2.0 * math.pi * self._freqs[:, :, None] * t + self._phases[:, :, None])
        drift = np.einsum("c,act->at", self._weights, waves)  # [3 axes, n], within ±1
        e = np.zeros(n) if energy is None else np.asarray(energy, np.float64)
        sway = 1.0 + SPEECH_SWAY_GAIN * e
        breath = BREATH * np.sin(2.0 * math.pi * BREATH_HZ * t + self._breath_phase)
        head_x = HEAD_SWAY * drift[0] * sway
        head_y = HEAD_BOB * drift[1] * sway + breath + SPEECH_NOD * e
        roll = HEAD_ROLL * drift[2] * sway
        return IdlePoses(
            blink.astype(np.float32),
            head_x.astype(np.float32),
            head_y.astype(np.float32),
            roll.astype(np.float32),
        )
