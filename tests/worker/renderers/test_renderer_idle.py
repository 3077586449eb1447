"""Idle life: blinks at natural intervals, a head that drifts, all reproducible for a seed."""

from __future__ import annotations

import numpy as np
import renderer_support as rs

from avatar_worker.renderers import idle


def test_same_seed_same_life_other_seed_other_life() -> None:
    a = idle.IdleMotion(rs.FPS, seed=1).step(600)
    b = idle.IdleMotion(rs.FPS, seed=1).step(600)
    c = idle.IdleMotion(rs.FPS, seed=2).step(600)
    for x, y in zip(a, b, strict=True):
        assert np.array_equal(x, y)
    assert not np.array_equal(a.blink, c.blink)
    assert not np.array_equal(a.head_x, c.head_x)


def test_blinks_are_brief_and_spaced_like_a_person() -> None:
    minutes = 3
    poses = idle.IdleMotion(rs.FPS, seed=3).step(minutes * 60 * rs.FPS)
    shut = poses.blink > 0.5
    onsets = np.flatnonzero(shut[1:] & ~shut[:-1]) + 1
    per_minute = len(onsets) / minutes
    assert 8 <= per_minute <= 25  # people blink roughly 10–20 times a minute at rest
    gaps = np.diff(onsets) / rs.FPS
    assert gaps.min() >= 0.3  # a double blink at the closest
    assert np.median(gaps) > idle.BLINK_MIN_GAP_S
    runs = np.diff(np.flatnonzero(np.diff(np.concatenate([[0], shut, [0]]))))[::2]
    assert runs.max() * 1000 / rs.FPS <= 200


def test_first_blink_comes_soon() -> None:
    for seed in range(5):
        poses = idle.IdleMotion(rs.FPS, seed=seed).step(3 * rs.FPS)
        assert poses.blink.max() > 0.9


def test_head_drifts_by_a_little_and_never_stops() -> None:
    poses = idle.IdleMotion(rs.FPS, seed=4).step(60 * rs.FPS)
    pose = np.stack([poses.head_x, poses.head_y, poses.roll])
    assert np.abs(pose).max() < 0.02  # at most ~5 px on a 250 px face
    assert (np.abs(np.diff(pose, axis=1)).max(axis=0) > 0).all()  # no two frames alike
    assert np.ptp(poses.head_x) > 0.004  # visible: a pixel or more on a 250 px face


def test_batching_does_not_change_the_poses() -> None:
    whole = idle.IdleMotion(rs.FPS, seed=5).step(300)
    split = idle.IdleMotion(rs.FPS, seed=5)
    parts = [split.step(n) for n in (1, 7, 92, 200)]
    for i, field in enumerate(whole):
        np.testing.assert_allclose(field, np.concatenate([p[i] for p in parts]), atol=1e-7)


def test_speech_adds_motion() -> None:
    calm = idle.IdleMotion(rs.FPS, seed=6).step(300)
    talking = idle.IdleMotion(rs.FPS, seed=6).step(300, np.full(300, 0.8, np.float32))
    assert np.abs(talking.head_x).max() > np.abs(calm.head_x).max()
    assert np.array_equal(talking.blink, calm.blink)
