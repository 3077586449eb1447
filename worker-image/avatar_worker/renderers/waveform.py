"""A cheap audio visualizer: a glowing ring that pulses with loudness, ringed by spectrum bars.

The same picture as VideoSDK's avatar examples (a circle whose radius follows the volume and
radial bars for frequency bands, on a dark background), drawn here with numpy and OpenCV only:
no torch, no GPU, a millisecond or two per frame, so a session that only needs "something that
moves while the agent talks" costs almost nothing.

Per frame: the window's spectrum (one batched `numpy.fft.rfft` per call) is pooled into
log-spaced bands from 90 Hz to 8 kHz, turned into dB above a floor, and smoothed with a fast
attack and slower release so bars rise on onsets and fall gracefully. Bars are mirrored left and
right (low frequencies at the top), drawn anti-aliased onto a cached background; the bright
parts are also drawn onto a quarter-size layer that is blurred and added back as glow. When
silent, the ring breathes slowly and a faint shimmer travels round it, so the picture is never
still. Deterministic: the only state is the smoothing and the frame counter.
"""

from __future__ import annotations

import math

import cv2
import numpy as np
import numpy.typing as npt

from avatar_worker import renderers
from avatar_worker.renderers import contract

BANDS = 32  # per side; mirrored, so 64 bars round the ring
LOW_HZ, HIGH_HZ = 90.0, 8000.0
FLOOR_DB = -70.0  # band level shown as an empty bar
RANGE_DB = 55.0  # and this much above it as a full one
ATTACK_S, RELEASE_S = 0.02, 0.18
LOUD_FLOOR_DBFS, LOUD_FULL_DBFS = -50.0, -12.0
BREATH_HZ = 0.25
GLOW = 0.75  # strength of the blurred halo

BACKGROUND_TOP = (18, 24, 40)  # RGB
BACKGROUND_BOTTOM = (6, 8, 16)
RING = (0, 200, 255)
BAR_LOW = (0, 255, 180)  # bars blend from this at the top of the ring…
BAR_HIGH = (120, 140, 255)  # …to this at the bottom


def _coefficient(seconds: float, fps: float) -> float:
    return 1.0 - math.exp(-1.0 / (max(seconds, 1e-6) * fps))


class WaveformRenderer(contract.FrameRenderer):
    """Ring and spectrum bars that follow the audio; CPU only."""

    name = "waveform"

    def __init__(self, config: contract.RenderConfig) -> None:
        super().__init__(config)
        w, h = config.width, config.height
        if w < 8 or h < 8:
            raise ValueError(f"waveform needs a frame of at least 8×8, got {w}×{h}")
        yy = np.linspace(0.0, 1.0, h, dtype=np.float32)[:, None, None]
        top = np.asarray(BACKGROUND_TOP, np.float32)
        bottom = np.asarray(BACKGROUND_BOTTOM, np.float32)
        gradient = top + (bottom - top) * yy
        self._background = np.ascontiguousarray(
            np.broadcast_to(gradient, (h, w, 3)).astype(np.uint8)
        )
        self._centre = (w / 2.0, h / 2.0)
        self._radius = 0.22 * min(w, h)
        self._glow_scale = 4 if min(w, h) >= 64 else 1
        self._thickness = max(1, round(min(w, h) / 160))
        # Bars: angle measured from the top, mirrored left and right.
        angles = np.linspace(0.0, math.pi, BANDS, endpoint=False) + math.pi / (2 * BANDS)
        self._angles = np.concatenate([angles, -angles])
        t = np.linspace(0.0, 1.0, BANDS)[:, None]
        colours = np.asarray(BAR_LOW) * (1 - t) + np.asarray(BAR_HIGH) * t
        self._colours = [tuple(float(c) for c in row) for row in np.concatenate([colours] * 2)]
        self._bands = self._band_matrix(config.samples_per_frame, config.sample_rate)
        self._window = np.hanning(config.samples_per_frame).astype(np.float32)
        self._attack = _coefficient(ATTACK_S, config.fps)
        self._release = _coefficient(RELEASE_S, config.fps)
        self._levels = np.zeros(BANDS, np.float32)
        self._loud = 0.0
        self._frame = 0

    @staticmethod
    def _band_matrix(samples: int, sample_rate: int) -> npt.NDArray[np.float32]:
        """[BANDS, bins]: averages the power of the FFT bins in each log-spaced band."""
        freqs = np.fft.rfftfreq(samples, 1.0 / sample_rate)
        edges = np.geomspace(LOW_HZ, min(HIGH_HZ, sample_rate / 2), BANDS + 1)
        matrix = np.zeros((BANDS, len(freqs)), np.float32)
        for i in range(BANDS):
            inside = (freqs >= edges[i]) & (freqs < edges[i + 1])
            if not inside.any():  # narrower than a bin: take the nearest one
                inside = np.abs(freqs - math.sqrt(edges[i] * edges[i + 1])) == np.min(
                    np.abs(freqs - math.sqrt(edges[i] * edges[i + 1]))
                )
            matrix[i, inside] = 1.0 / inside.sum()
        return matrix

    def _analyse(
        self, audio: npt.NDArray[np.float32]
    ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
        """Per-frame band levels [N, BANDS] and loudness [N], both in [0, 1], unsmoothed."""
        s = audio.shape[1]
        if s != self._window.shape[0]:
            self._window = np.hanning(s).astype(np.float32)
            self._bands = self._band_matrix(s, self.config.sample_rate)
        power = np.abs(np.fft.rfft(audio * self._window, axis=1)) ** 2
        # Normalise so that a full-scale sine reads 0 dB.
        power *= 4.0 / float(np.sum(self._window)) ** 2
        bands = power @ self._bands.T
        levels = np.clip((10.0 * np.log10(bands + 1e-12) - FLOOR_DB) / RANGE_DB, 0.0, 1.0)
        rms = np.sqrt(np.mean(np.square(audio), axis=1) + 1e-12)
        loud = np.clip(
            (20.0 * np.log10(rms) - LOUD_FLOOR_DBFS) / (LOUD_FULL_DBFS - LOUD_FLOOR_DBFS), 0.0, 1.0
        )
        return levels.astype(np.float32), loud.astype(np.float32)

    def render(self, audio: npt.NDArray[np.float32]) -> npt.NDArray[np.uint8]:
        audio = np.asarray(audio, dtype=np.float32)
        if audio.ndim != 2:
            raise ValueError(f"audio must be [frames, samples], got shape {audio.shape}")
        n = audio.shape[0]
        frames = np.empty((n, self.config.height, self.config.width, 3), np.uint8)
        if n == 0:
            return frames
        targets, louds = self._analyse(audio)
        for i in range(n):
            rising = targets[i] > self._levels
            rate = np.where(rising, self._attack, self._release).astype(np.float32)
            self._levels += (targets[i] - self._levels) * rate
            loud_rate = self._attack if louds[i] > self._loud else self._release
            self._loud += (float(louds[i]) - self._loud) * loud_rate
            self._draw(frames[i], self._frame / self.config.fps)
            self._frame += 1
        return frames

    def _draw(self, out: npt.NDArray[np.uint8], t: float) -> None:
        out[:] = self._background
        cx, cy = self._centre
        breath = 0.02 * math.sin(2.0 * math.pi * BREATH_HZ * t)
        radius = self._radius * (1.0 + breath + 0.25 * self._loud)
        g = self._glow_scale
        glow = np.zeros((-(-out.shape[0] // g), -(-out.shape[1] // g), 3), np.uint8)
        shift = 4  # cv2's fixed-point sub-pixel bits: smooth motion instead of 1 px steps
        k = float(1 << shift)

        def point(x: float, y: float, scale: int = 1) -> tuple[int, int]:
            return (round(x * k / scale), round(y * k / scale))

        ring_width = self._thickness * (2 + round(2 * self._loud))
        for layer, scale in ((out, 1), (glow, g)):
            cv2.circle(
                layer,
                point(cx, cy, scale),
                round(radius * k / scale),
                RING,
                max(1, ring_width // scale),
                cv2.LINE_AA,
                shift,
            )
        # A faint highlight travelling round the ring: alive even in silence.
        spin = 2.0 * math.pi * 0.15 * t
        cv2.ellipse(
            out,
            point(cx, cy),
            (round(radius * k), round(radius * k)),
            math.degrees(spin),
            0,
            40,
            (200, 240, 255),
            max(1, ring_width // 2),
            cv2.LINE_AA,
            shift,
        )
        inner = radius + 3.0 * self._thickness
        reach = 0.9 * self._radius
        for j, angle in enumerate(self._angles):
            level = float(self._levels[j % BANDS])
            if level <= 0.02:
                continue
            sx, sy = math.sin(angle), -math.cos(angle)
            x0, y0 = cx + sx * inner, cy + sy * inner
            x1, y1 = cx + sx * (inner + reach * level), cy + sy * (inner + reach * level)
            colour = self._colours[j]
            cv2.line(
                out, point(x0, y0), point(x1, y1), colour, 2 * self._thickness, cv2.LINE_AA, shift
            )
            cv2.line(
                glow,
                point(x0, y0, g),
                point(x1, y1, g),
                colour,
                max(1, 2 * self._thickness // g + 1),
                cv2.LINE_AA,
                shift,
            )
        sigma = max(1.0, 2.5 * self._radius / (40.0 * g))
        glow = cv2.GaussianBlur(glow, (0, 0), sigma)
        if g > 1:
            glow = cv2.resize(glow, (out.shape[1], out.shape[0]), interpolation=cv2.INTER_LINEAR)
        else:
            glow = glow[: out.shape[0], : out.shape[1]]
        cv2.addWeighted(out, 1.0, glow, GLOW, 0.0, dst=out)

    def reset(self) -> None:
        self._levels[:] = 0.0
        self._loud = 0.0


renderers.register("waveform", WaveformRenderer)
