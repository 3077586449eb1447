"""Where the face is: metadata first, OpenCV's bundled cascades next, a centred guess last."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from avatar_worker.renderers import faces


def test_builtin_portrait_ships_its_metadata() -> None:
    image, layout = faces.load(None)
    assert image.shape == (512, 512, 3) and image.dtype == np.uint8
    assert layout.source == "metadata"
    face, mouth = layout.face, layout.mouth
    assert face.x0 < mouth.x0 < mouth.x1 < face.x1
    assert layout.nose < mouth.cy < layout.chin
    left, right = layout.eyes
    assert left.x1 < face.cx < right.x0
    assert left.y1 < layout.nose


def test_bundled_detector_finds_the_builtin_face_without_metadata(tmp_path: Path) -> None:
    image_path = tmp_path / "portrait.png"
    shutil.copy(faces.DEFAULT_PORTRAIT, image_path)
    _, found = faces.load(str(image_path))
    _, truth = faces.load(None)
    assert found.source == "detector"
    assert abs(found.mouth.cx - truth.mouth.cx) < 10
    assert abs(found.lip_line[1][1] - truth.lip_line[1][1]) < 6
    for eye, true_eye in zip(found.eyes, truth.eyes, strict=True):
        assert abs(eye.cx - true_eye.cx) < 12 and abs(eye.cy - true_eye.cy) < 12


def test_darkest_row_finds_the_lip_line(tmp_path: Path) -> None:
    image = np.full((200, 200, 3), 200, np.uint8)
    cv2.rectangle(image, (70, 120), (130, 140), (180, 90, 90), -1)
    cv2.line(image, (72, 131), (128, 131), (90, 30, 40), 2)
    image_path = tmp_path / "lips.png"
    cv2.imwrite(str(image_path), image)
    image_path.with_suffix(".json").write_text(
        json.dumps({"face": [40, 40, 160, 170], "mouth": [70, 118, 130, 142]})
    )
    _, layout = faces.load(str(image_path))
    assert all(abs(y - 131.5) <= 1.5 for _, y in layout.lip_line)


@pytest.mark.parametrize(
    ("meta", "message"),
    [
        ({}, "needs a 'face' box"),
        ({"face": [10, 10, 5, 50]}, "'face' must be"),
        ({"face": [10, 10, 90, 90], "mouth": "lips"}, "'mouth' must be"),
        ({"face": [10, 10, 90, 90], "eyes": [[1, 2, 3, 4]]}, "'eyes' must hold two boxes"),
        ({"face": [10, 10, 90, 90], "lip_line": [[1, 2]]}, "'lip_line' must be three"),
    ],
)
def test_bad_metadata_names_the_field(
    tmp_path: Path, meta: dict[str, object], message: str
) -> None:
    image_path = tmp_path / "a.png"
    cv2.imwrite(str(image_path), np.zeros((100, 100, 3), np.uint8))
    image_path.with_suffix(".json").write_text(json.dumps(meta))
    with pytest.raises(faces.AvatarAssetError, match=message):
        faces.load(str(image_path))


def test_unreadable_image_is_a_clear_error(tmp_path: Path) -> None:
    image_path = tmp_path / "a.png"
    image_path.write_bytes(b"not a png")
    with pytest.raises(faces.AvatarAssetError, match="not an image"):
        faces.load(str(image_path))


@pytest.mark.parametrize(("width", "height"), [(512, 512), (640, 360), (360, 640), (64, 64)])
def test_fit_keeps_the_whole_face_in_the_frame(width: int, height: int) -> None:
    image, layout = faces.load(None)
    frame, fitted = faces.fit(image, layout, width, height)
    assert frame.shape == (height, width, 3) and frame.dtype == np.uint8
    face = fitted.face
    assert 0 <= face.x0 < face.x1 <= width
    assert 0 <= face.y0 < face.y1 <= height
    # The fitted layout still points at the lips: the seam is the darkest row there.
    mouth = fitted.mouth
    if mouth.w >= 16:
        column = frame[int(mouth.y0) : int(mouth.y1) + 1, int(mouth.cx)].mean(axis=1)
        assert abs(int(mouth.y0) + int(np.argmin(column)) - fitted.lip_line[1][1]) <= 2
