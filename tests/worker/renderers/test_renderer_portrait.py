"""The portrait renderer, judged on the frames it draws: shapes, lip sync, idle life, reset."""

from __future__ import annotations

import itertools
import logging
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import renderer_support as rs
import torch

from avatar_worker import renderers
from avatar_worker.renderers import contract, faces
from avatar_worker.renderers.portrait import PortraitRenderer

MakeConfig = Callable[..., contract.RenderConfig]


@pytest.fixture(scope="module")
def speech() -> rs.Speech:
    """Half a second of silence, five seconds of syllables, two seconds of silence."""
    spoken = rs.speech_like(5.0, seed=1)
    return rs.Speech(
        np.concatenate([rs.silence(15), spoken.windows, rs.silence(60)]),
        np.concatenate([np.zeros(15), spoken.envelope, np.zeros(60)]),
    )


@pytest.fixture(scope="module")
def spoken_frames(speech: rs.Speech) -> tuple[PortraitRenderer, rs.Frames]:
    renderer = PortraitRenderer(contract.RenderConfig(512, 512, rs.FPS, rs.SAMPLE_RATE, seed=7))
    return renderer, renderer.render(speech.windows)


def test_builtins_are_registered_under_the_spec_names() -> None:
    assert {"portrait", "waveform", "model"} <= set(renderers.available())


def test_renderer_is_created_by_name_and_by_import_path(make_config: MakeConfig) -> None:
    assert isinstance(renderers.create("portrait", make_config(64, 64)), PortraitRenderer)
    custom = renderers.create("avatar_worker.renderers.portrait:PortraitRenderer", make_config())
    assert isinstance(custom, PortraitRenderer)
    with pytest.raises(renderers.UnknownRendererError, match="no_such_module"):
        renderers.create("no_such_module:Renderer", make_config())
    with pytest.raises(renderers.UnknownRendererError, match="portrait, waveform"):
        renderers.create("sketch", make_config())


@pytest.mark.parametrize(("width", "height"), [(512, 512), (640, 360), (360, 640), (64, 64)])
def test_frames_have_the_configured_shape_and_dtype(
    make_config: MakeConfig, width: int, height: int
) -> None:
    renderer = PortraitRenderer(make_config(width, height))
    frames = renderer.render(rs.speech_like(0.5).windows)
    assert frames.shape == (15, height, width, 3)
    assert frames.dtype == np.uint8
    assert frames.flags.c_contiguous
    assert renderer.render(rs.silence(0)).shape == (0, height, width, 3)


def test_same_seed_same_frames_other_seed_other_idle_life(make_config: MakeConfig) -> None:
    audio = rs.speech_like(2.0, seed=3).windows
    first = PortraitRenderer(make_config(seed=11)).render(audio)
    again = PortraitRenderer(make_config(seed=11)).render(audio)
    other = PortraitRenderer(make_config(seed=12)).render(audio)
    assert np.array_equal(first, again)
    assert not np.array_equal(first, other)


def test_batching_does_not_change_the_frames(make_config: MakeConfig) -> None:
    # Speech, a pause long enough for the mouth to shut and a blink, speech again: batches
    # that mix talking and silent, blinking and open-eyed frames.
    audio = np.concatenate(
        [rs.speech_like(1.0, seed=4).windows, rs.silence(45), rs.speech_like(0.5).windows]
    )
    whole = PortraitRenderer(make_config(seed=2)).render(audio)
    split = PortraitRenderer(make_config(seed=2))
    cuts = [0, 7, 8, 19, 33, 34, 61, 70, len(audio)]
    parts = np.concatenate([split.render(audio[a:b]) for a, b in itertools.pairwise(cuts)])
    assert np.array_equal(whole, parts)


def test_mouth_opening_follows_the_audio_envelope(
    speech: rs.Speech, spoken_frames: tuple[PortraitRenderer, rs.Frames]
) -> None:
    renderer, frames = spoken_frames
    opening = rs.mouth_opening(frames, renderer.layout.mouth)
    envelope, voiced = speech.envelope, speech.envelope > 0
    # The thresholds, from what simpler mouths score on this audio: a mouth that flaps fully
    # open whenever there is any sound correlates ~0.80 with the envelope (the syllables'
    # gaps alone carry that much), one with the right amount of opening at random moments
    # of each syllable ~0.69, one a syllable late (150 ms) ~−0.16. This one follows a smoothed
    # loudness (30 ms attack, 75 ms release) of 120–260 ms syllables: it tracks the envelope
    # a frame behind on the way down, measured 0.875 overall and 0.70 within the syllables,
    # where a flapping mouth has no correlation at all.
    flapping = np.corrcoef(voiced, envelope)[0, 1]
    assert np.corrcoef(opening, envelope)[0, 1] > flapping + 0.04
    assert np.corrcoef(opening[voiced], envelope[voiced])[0, 1] > 0.5
    loud = speech.envelope > 0.6 * speech.envelope.max()
    quiet = speech.envelope == 0
    assert opening[loud].mean() > 5 * max(1.0, opening[quiet].mean())


def test_mouth_is_closed_in_silence_but_the_picture_keeps_moving(
    spoken_frames: tuple[PortraitRenderer, rs.Frames],
) -> None:
    renderer, frames = spoken_frames
    tail = frames[-45:]  # the last 1.5 s of the 2 s of silence
    assert rs.mouth_opening(tail, renderer.layout.mouth).max() == 0
    assert rs.mouth_opening(frames[:15], renderer.layout.mouth).max() == 0
    changed = np.abs(np.diff(tail.astype(np.int16), axis=0)).reshape(len(tail) - 1, -1).max(axis=1)
    assert (changed > 0).all(), "some silent frames repeat the one before: the picture froze"


def test_silent_mouth_is_the_reference_image_moved_only_by_the_head(
    make_config: MakeConfig,
) -> None:
    renderer = PortraitRenderer(make_config())
    frames = renderer.render(rs.silence(30))
    mouth = renderer.layout.mouth
    ys = slice(int(mouth.y0) + 4, int(mouth.y1) - 4)
    xs = slice(int(mouth.x0) + 8, int(mouth.x1) - 8)
    # Head motion moves the mouth by a pixel or so, so compare with the best-matching shift.
    best = min(
        np.abs(
            frames[:, ys, xs].astype(np.int16)
            - np.roll(renderer.frame, (dy, dx), axis=(0, 1))[ys, xs]
        ).mean()
        for dy in range(-3, 4)
        for dx in range(-3, 4)
    )
    assert best < 12


def test_blinks_come_at_natural_intervals_during_long_silence(make_config: MakeConfig) -> None:
    renderer = PortraitRenderer(make_config(256, 256, seed=5))
    frames = renderer.render(rs.silence(12 * rs.FPS))
    for eye in renderer.layout.eyes:
        whites = rs.eye_whites(frames, eye)
        shut = whites < 0.25 * whites.max()
        onsets = np.flatnonzero(shut[1:] & ~shut[:-1]) + 1
        assert 2 <= len(onsets) <= 8, f"{len(onsets)} blinks in 12 s"
        runs = np.diff(np.flatnonzero(np.diff(np.concatenate([[0], shut, [0]]))))[::2]
        assert runs.max() <= 6, "an eye stayed shut for more than 200 ms"


def test_reset_closes_the_mouth_at_once(make_config: MakeConfig) -> None:
    loud = rs.speech_like(1.0, seed=9, level=0.5).windows
    peak = int(np.argmax(np.abs(loud).mean(axis=1))) + 1

    def next_silent_frame(reset: bool) -> int:
        renderer = PortraitRenderer(make_config())
        renderer.render(loud[:peak])
        if reset:
            renderer.reset()
        return int(rs.mouth_opening(renderer.render(rs.silence(1)), renderer.layout.mouth)[0])

    assert next_silent_frame(reset=False) > 0  # without it, the mouth closes gradually
    assert next_silent_frame(reset=True) == 0


def test_missing_image_is_a_clear_error(make_config: MakeConfig, tmp_path: Path) -> None:
    with pytest.raises(faces.AvatarAssetError, match=r"nope\.png.*does not exist"):
        PortraitRenderer(make_config(image=str(tmp_path / "nope.png")))


def test_a_user_image_without_metadata_is_located_by_the_bundled_detector(
    make_config: MakeConfig, tmp_path: Path
) -> None:
    image = tmp_path / "someone.png"
    shutil.copy(faces.DEFAULT_PORTRAIT, image)
    renderer = PortraitRenderer(make_config(image=str(image)))
    assert renderer.layout.source == "detector"
    frames = renderer.render(rs.speech_like(1.0, seed=2, level=0.5).windows)
    assert rs.mouth_opening(frames, renderer.layout.mouth).max() > 50


def test_a_faceless_image_falls_back_with_a_warning(
    make_config: MakeConfig, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import cv2

    image = tmp_path / "wall.png"
    cv2.imwrite(str(image), np.full((300, 200, 3), 128, np.uint8))
    with caplog.at_level(logging.WARNING):
        renderer = PortraitRenderer(make_config(256, 256, image=str(image)))
    assert renderer.layout.source == "fallback"
    assert "no face found" in caplog.text
    assert renderer.render(rs.speech_like(0.3).windows).shape == (9, 256, 256, 3)


def test_no_vram_is_reported_on_the_cpu(make_config: MakeConfig) -> None:
    assert PortraitRenderer(make_config(64, 64)).vram_used_mib is None


def test_cudas_sampler_draws_what_the_cpus_draws(make_config: MakeConfig) -> None:
    """CUDA samples with grid_sample (float), the CPU with OpenCV's remap (fixed-point
    positions in 1/32 px): both run on a CPU, and must agree to a few levels."""
    audio = np.concatenate([rs.speech_like(2.0, seed=6).windows, rs.silence(30)])
    remap = PortraitRenderer(make_config(seed=3))
    grid = PortraitRenderer(make_config(seed=3))
    grid._rig.remap = False
    ours, theirs = remap.render(audio), grid.render(audio)
    diff = np.abs(ours.astype(np.int16) - theirs)
    assert diff.max() <= 3  # measured 3, on 84 of 71 million values
    assert diff.mean() < 0.01  # measured 0.003


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_and_cpu_draw_the_same_frames(make_config: MakeConfig) -> None:
    audio = rs.speech_like(2.0, seed=6).windows
    cpu = PortraitRenderer(make_config(device="cpu")).render(audio)
    gpu = PortraitRenderer(make_config(device="cuda"))
    frames = gpu.render(audio)
    diff = np.abs(cpu.astype(np.int16) - frames)
    assert diff.max() <= 3  # the samplers differ (see the test above)
    assert diff.mean() < 0.01
    assert gpu.vram_used_mib is not None and gpu.vram_used_mib > 0
