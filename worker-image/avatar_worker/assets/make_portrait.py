"""Draws the built-in portrait (`portrait.png`) and its face metadata (`portrait.json`).

The project ships a face it made itself, so the default avatar carries no third-party rights and
needs no face detector: every region the portrait renderer animates (face, eyes, lips and the
line where the lips meet) is known exactly because this script drew it. Run it again after
changing the drawing:

    python worker-image/avatar_worker/assets/make_portrait.py

Drawing happens at twice the output size with anti-aliased OpenCV primitives and is then
downsampled (INTER_AREA), which gives smooth edges without any vector-graphics dependency.
Colours are RGB throughout; only `cv2.imwrite` sees BGR. The output is deterministic.
"""

from __future__ import annotations

import json
import pathlib
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt

SIZE = 512  # output pixels (square)
SS = 2  # supersampling factor while drawing
_S = SIZE * SS

FloatImage = npt.NDArray[np.float32]
Mask = npt.NDArray[np.float32]

# The layout, in output pixels. Everything else is derived from these.
CX = 256.0  # face's vertical axis
EYE_Y = 246.0
EYE_DX = 46.0  # eye centre distance from the axis
EYE_W, EYE_H = 52.0, 24.0
BROW_Y = 214.0
NOSE_Y = 304.0
MOUTH_Y = 346.0  # where the lips meet, at the centre
MOUTH_W = 74.0
MOUTH_CORNER_LIFT = 3.0  # corners sit this much higher than the centre (a slight smile)
UPPER_LIP_H, LOWER_LIP_H = 10.0, 12.0
CHIN_Y = 398.0
FACE_TOP = 118.0
FACE_HALF_W = 99.0

SKIN = (238.0, 199.0, 172.0)
SKIN_SHADOW = (205.0, 152.0, 128.0)
HAIR = (74.0, 48.0, 38.0)
HAIR_LIGHT = (112.0, 76.0, 58.0)
LIP = (196.0, 102.0, 104.0)
LIP_DARK = (140.0, 62.0, 68.0)
IRIS = (86.0, 120.0, 92.0)
SHIRT = (58.0, 96.0, 128.0)


def _px(v: float) -> int:
    return round(v * SS)


def _pts(points: list[tuple[float, float]]) -> npt.NDArray[np.int32]:
    return np.array([[_px(x), _px(y)] for x, y in points], dtype=np.int32)


def _smooth(
    points: list[tuple[float, float]], closed: bool = True, n: int = 12
) -> list[tuple[float, float]]:
    """A Catmull-Rom curve through control points: organic outlines from a handful of numbers."""
    p = np.asarray(points, np.float64)
    # Repeat the end points so that the curve passes through every control point.
    p = np.concatenate([p[-1:], p, p[:2]] if closed else [p[:1], p, p[-1:]])
    out: list[tuple[float, float]] = []
    for i in range(1, len(p) - 2):
        p0, p1, p2, p3 = p[i - 1], p[i], p[i + 1], p[i + 2]
        for t in np.linspace(0.0, 1.0, n, endpoint=False):
            q = 0.5 * (
                2 * p1
                + (-p0 + p2) * t
                + (2 * p0 - 5 * p1 + 4 * p2 - p3) * t * t
                + (-p0 + 3 * p1 - 3 * p2 + p3) * t**3
            )
            out.append((float(q[0]), float(q[1])))
    return out


def _poly_mask(points: list[tuple[float, float]]) -> Mask:
    mask = np.zeros((_S, _S), np.uint8)
    cv2.fillPoly(mask, [_pts(points)], 255, cv2.LINE_AA)
    return mask.astype(np.float32) / 255.0


def _ellipse_mask(cx: float, cy: float, ax: float, ay: float, angle: float = 0.0) -> Mask:
    mask = np.zeros((_S, _S), np.uint8)
    cv2.ellipse(mask, (_px(cx), _px(cy)), (_px(ax), _px(ay)), angle, 0, 360, 255, -1, cv2.LINE_AA)
    return mask.astype(np.float32) / 255.0


def _paint(canvas: FloatImage, mask: Mask, color: tuple[float, float, float] | FloatImage) -> None:
    """Alpha-composite `color` (a colour or an image) through `mask` onto `canvas` in place."""
    a = mask[..., None]
    canvas *= 1.0 - a
    canvas += a * np.asarray(color, np.float32)


def _blur(mask: Mask, sigma: float) -> Mask:
    return np.asarray(cv2.GaussianBlur(mask, (0, 0), sigma * SS), np.float32)


def _face_outline() -> list[tuple[float, float]]:
    """An egg: a round crown, full cheeks, a soft chin."""
    left: list[tuple[float, float]] = []
    for y in np.linspace(FACE_TOP, CHIN_Y, 90):
        if y < 240.0:  # crown: a circle-ish arc
            t = (240.0 - y) / (240.0 - FACE_TOP)
            half = FACE_HALF_W * float(np.sqrt(max(0.0, 1.0 - t**2.2)))
        else:  # cheeks to chin: a superellipse, so the jaw is soft, not pointed
            t = (y - 240.0) / (CHIN_Y - 240.0)
            half = FACE_HALF_W * float((max(0.0, 1.0 - t**2.4)) ** (1 / 1.7))
            half = max(half, 0.0)
        left.append((CX - half, float(y)))
    right = [(2 * CX - x, y) for x, y in reversed(left)]
    return left + right


def _lip_line_y(x: float) -> float:
    """Where the lips meet: lowest at the centre, corners lifted (the metadata's parabola)."""
    u = (x - CX) / (MOUTH_W / 2)
    return MOUTH_Y - MOUTH_CORNER_LIFT * u * u


def _draw_background(canvas: FloatImage) -> None:
    yy, xx = np.mgrid[0:_S, 0:_S].astype(np.float32) / _S
    top = np.array([196.0, 214.0, 224.0], np.float32)
    bottom = np.array([150.0, 176.0, 192.0], np.float32)
    canvas[:] = top + (bottom - top) * yy[..., None]
    glow = np.exp(-(((xx - 0.5) / 0.38) ** 2 + ((yy - 0.42) / 0.36) ** 2))
    canvas += (glow * 28.0)[..., None]


def _draw_body(canvas: FloatImage) -> None:
    neck = _poly_mask([(CX - 42, 350), (CX + 42, 350), (CX + 50, 460), (CX - 50, 460)])
    _paint(canvas, neck, SKIN_SHADOW)
    # Shade the top of the neck where the chin casts its shadow.
    yy = np.mgrid[0:_S, 0:_S][0].astype(np.float32) / SS
    shade = np.clip((yy - 390.0) / 40.0, 0.0, 1.0)
    _paint(canvas, neck * (1.0 - shade) * 0.35, (150.0, 100.0, 85.0))
    shoulders = _ellipse_mask(CX, 565, 250, 132)
    _paint(canvas, shoulders, SHIRT)
    skin_v = _poly_mask([(CX - 47, 425), (CX + 47, 425), (CX + 52, 436), (CX, 484), (CX - 52, 436)])
    _paint(canvas, skin_v, SKIN_SHADOW)
    collar = _poly_mask(
        [(CX - 52, 436), (CX, 484), (CX + 52, 436), (CX + 64, 446), (CX, 506), (CX - 64, 446)]
    )
    _paint(canvas, collar, (44.0, 76.0, 104.0))


def _draw_hair_back(canvas: FloatImage) -> None:
    back = _ellipse_mask(CX, 252, 126, 152)
    # A bob: the ends curl in at the jaw, a little longer at the sides than at the back.
    cut = _blur(
        _poly_mask(
            _smooth(
                [
                    (0, 0),
                    (SIZE, 0),
                    (SIZE, 360),
                    (CX + 118, 376),
                    (CX, 352),
                    (CX - 118, 376),
                    (0, 360),
                ]
            )
        ),
        2.0,
    )
    _paint(canvas, back * cut, HAIR)


def _draw_head(canvas: FloatImage) -> Mask:
    for side in (-1, 1):
        ear = _ellipse_mask(CX + side * (FACE_HALF_W - 2), 272, 13, 24)
        _paint(canvas, ear, SKIN_SHADOW)
    face = _poly_mask(_face_outline())
    # Soft form shading: darker towards the outline, from a distance transform of the mask.
    inside = (face > 0.5).astype(np.uint8)
    dist = cv2.distanceTransform(inside, cv2.DIST_L2, 5) / SS
    light = np.clip(dist / 26.0, 0.0, 1.0) ** 0.7
    skin = np.asarray(SKIN, np.float32)
    shadow = np.asarray(SKIN_SHADOW, np.float32)
    shaded = shadow + (skin - shadow) * light[..., None]
    _paint(canvas, face, shaded.astype(np.float32))
    for side in (-1, 1):  # warm cheeks
        blush = _blur(_ellipse_mask(CX + side * 58, 312, 22, 13), 9.0)
        _paint(canvas, blush * 0.28, (232.0, 138.0, 134.0))
    return face


def _draw_eye(canvas: FloatImage, ex: float) -> None:
    hw, hh = EYE_W / 2, EYE_H / 2
    xs = np.linspace(ex - hw, ex + hw, 40)
    arc = np.clip(np.sin(np.pi * (xs - ex + hw) / EYE_W), 0.0, 1.0)
    upper = [(float(x), EYE_Y - hh * float(a) ** 0.8) for x, a in zip(xs, arc, strict=True)]
    lower = [
        (float(x), EYE_Y + 0.75 * hh * float(a) ** 1.2)
        for x, a in zip(xs[::-1], arc[::-1], strict=True)
    ]
    almond = _poly_mask(upper + lower)
    _paint(canvas, almond, (246.0, 244.0, 238.0))
    # Iris and pupil, clipped to the almond so the lids cover them.
    yy, xx = np.mgrid[0:_S, 0:_S].astype(np.float32) / SS
    r = np.sqrt((xx - ex) ** 2 + (yy - EYE_Y - 0.5) ** 2)
    iris_r = 10.5
    iris = np.clip((iris_r - r) * SS, 0.0, 1.0)
    iris_col = np.asarray(IRIS, np.float32) * (0.75 + 0.35 * np.clip(r / iris_r, 0, 1))[..., None]
    _paint(canvas, iris * almond, iris_col.astype(np.float32))
    rim = np.clip((iris_r - r) * SS, 0, 1) * np.clip((r - iris_r + 1.6) * SS, 0, 1)
    _paint(canvas, rim * almond * 0.8, (44.0, 60.0, 48.0))
    pupil = np.clip((4.6 - r) * SS, 0.0, 1.0)
    _paint(canvas, pupil * almond, (22.0, 20.0, 22.0))
    glint = _ellipse_mask(ex + 3.2, EYE_Y - 3.2, 2.2, 2.2)
    _paint(canvas, glint * almond, (255.0, 255.0, 255.0))
    # Shadow of the upper lid on the eyeball.
    lid_shadow = _blur(
        _poly_mask([*upper, (ex + hw, EYE_Y - hh + 4), (ex - hw, EYE_Y - hh + 4)]), 1.5
    )
    _paint(canvas, lid_shadow * almond * 0.25, (120.0, 90.0, 80.0))
    lash = np.zeros((_S, _S), np.uint8)
    cv2.polylines(lash, [_pts(upper)], False, 255, _px(2.6), cv2.LINE_AA)
    _paint(canvas, lash.astype(np.float32) / 255.0, (40.0, 28.0, 26.0))
    low = np.zeros((_S, _S), np.uint8)
    cv2.polylines(low, [_pts(lower)], False, 255, _px(1.0), cv2.LINE_AA)
    _paint(canvas, low.astype(np.float32) / 255.0 * 0.45, (150.0, 100.0, 90.0))
    crease = np.zeros((_S, _S), np.uint8)
    crease_pts = [(x, y - 6.5 + 1.5 * abs(x - ex) / hw) for x, y in upper[6:-4]]
    cv2.polylines(crease, [_pts(crease_pts)], False, 255, _px(1.0), cv2.LINE_AA)
    _paint(canvas, _blur(crease.astype(np.float32) / 255.0, 0.6) * 0.35, (170.0, 115.0, 100.0))


def _draw_brow(canvas: FloatImage, ex: float, side: int) -> None:
    xs = np.linspace(-1.0, 1.0, 30)
    top, bottom = [], []
    for u in xs:
        x = ex + side * u * 29.0
        arch = BROW_Y - 6.0 * (1.0 - u * u) + 2.5 * u
        thick = 2.2 + 2.6 * (1.0 - (u + 1.0) / 2.0) ** 0.7  # thicker towards the nose
        top.append((float(x), float(arch - thick)))
        bottom.append((float(x), float(arch + thick)))
    _paint(canvas, _blur(_poly_mask(top + bottom[::-1]), 0.5), HAIR)


def _draw_nose(canvas: FloatImage) -> None:
    ridge = np.zeros((_S, _S), np.uint8)
    cv2.polylines(
        ridge,
        [_pts([(CX - 6, 262), (CX - 9, 285), (CX - 12, 298)])],
        False,
        255,
        _px(2.0),
        cv2.LINE_AA,
    )
    _paint(canvas, _blur(ridge.astype(np.float32) / 255.0, 2.0) * 0.35, SKIN_SHADOW)
    base = _blur(_ellipse_mask(CX, NOSE_Y + 2, 17, 6), 2.5)
    _paint(canvas, base * 0.35, SKIN_SHADOW)
    for side in (-1, 1):
        nostril = _ellipse_mask(CX + side * 8.5, NOSE_Y + 2.5, 4.0, 2.2, angle=side * 15.0)
        _paint(canvas, _blur(nostril, 0.6) * 0.8, (150.0, 96.0, 86.0))
    tip = _blur(_ellipse_mask(CX + 1, NOSE_Y - 7, 6, 4), 2.0)
    _paint(canvas, tip * 0.35, (252.0, 226.0, 206.0))


def _draw_mouth(canvas: FloatImage) -> None:
    hw = MOUTH_W / 2
    xs = np.linspace(CX - hw, CX + hw, 50)
    line = [(float(x), _lip_line_y(float(x))) for x in xs]
    upper_top = []
    for x in xs:
        u = (x - CX) / hw
        bow = 2.6 * np.exp(-(((abs(u) - 0.28) / 0.2) ** 2))  # the two peaks of the Cupid's bow
        h = UPPER_LIP_H * (1.0 - abs(u) ** 2.5) + bow
        upper_top.append((float(x), _lip_line_y(float(x)) - float(h)))
    lower_bottom = []
    for x in xs:
        u = (x - CX) / hw
        h = LOWER_LIP_H * (1.0 - abs(u) ** 1.8) ** 0.9
        lower_bottom.append((float(x), _lip_line_y(float(x)) + float(h)))
    upper = _poly_mask(upper_top + line[::-1])
    lower = _poly_mask(line + lower_bottom[::-1])
    _paint(canvas, upper, LIP_DARK)
    _paint(canvas, lower, LIP)
    sheen = _blur(_ellipse_mask(CX, MOUTH_Y + 5.5, 13, 3.0), 1.5)
    _paint(canvas, sheen * 0.35, (240.0, 178.0, 176.0))
    seam = np.zeros((_S, _S), np.uint8)
    cv2.polylines(seam, [_pts(line)], False, 255, _px(1.6), cv2.LINE_AA)
    _paint(canvas, seam.astype(np.float32) / 255.0 * 0.85, (98.0, 38.0, 44.0))
    under = _blur(_ellipse_mask(CX, MOUTH_Y + LOWER_LIP_H + 5, 14, 3), 2.0)
    _paint(canvas, under * 0.25, SKIN_SHADOW)


def _draw_hair_front(canvas: FloatImage, face: Mask) -> None:
    # A fringe swept from a side parting, and two locks that frame the cheeks.
    fringe = _smooth(
        [
            (CX - 112, 252),
            (CX - 110, 176),
            (CX - 64, 124),
            (CX + 6, 106),
            (CX + 74, 120),
            (CX + 112, 170),
            (CX + 114, 250),
            (CX + 100, 226),
            (CX + 78, 196),
            (CX + 40, 174),
            (CX - 2, 160),
            (CX - 38, 146),
            (CX - 66, 160),
            (CX - 90, 194),
            (CX - 100, 240),
        ]
    )
    mask = _blur(_poly_mask(fringe), 0.7)
    shadow = (_blur(mask, 6.0) * face * (1.0 - mask)).astype(np.float32)
    _paint(canvas, shadow * 0.35, SKIN_SHADOW)
    _paint(canvas, mask, HAIR)
    for side in (-1, 1):
        lock = _smooth(
            [
                (CX + side * 96, 214),
                (CX + side * 116, 226),
                (CX + side * 124, 300),
                (CX + side * 116, 360),
                (CX + side * 102, 376),
                (CX + side * 106, 330),
                (CX + side * 98, 270),
            ]
        )
        _paint(canvas, _blur(_poly_mask(lock), 0.7), HAIR)
    strands = np.zeros((_S, _S), np.uint8)
    for i in range(8):
        t = i / 7.0
        x0 = CX - 80 + 150 * t
        pts = _smooth(
            [(x0 - 6, 118 + 8 * abs(t - 0.45)), (x0 + 8, 136), (x0 + 6 + 18 * t, 166)],
            closed=False,
            n=6,
        )
        cv2.polylines(strands, [_pts(pts)], False, 255, _px(1.3), cv2.LINE_AA)
    _paint(canvas, _blur(strands.astype(np.float32) / 255.0, 0.9) * mask * 0.45, HAIR_LIGHT)


def draw() -> tuple[npt.NDArray[np.uint8], dict[str, Any]]:
    """The portrait (uint8 RGB, SIZE×SIZE) and its metadata."""
    canvas = np.zeros((_S, _S, 3), np.float32)
    _draw_background(canvas)
    _draw_body(canvas)
    _draw_hair_back(canvas)
    face = _draw_head(canvas)
    for side in (-1, 1):
        ex = CX + side * EYE_DX
        _draw_eye(canvas, ex)
        _draw_brow(canvas, ex, side)
    _draw_nose(canvas)
    _draw_mouth(canvas)
    _draw_hair_front(canvas, face)
    small = cv2.resize(canvas, (SIZE, SIZE), interpolation=cv2.INTER_AREA)
    image = np.clip(np.rint(small), 0, 255).astype(np.uint8)

    hw = MOUTH_W / 2
    meta: dict[str, Any] = {
        "description": "Built-in portrait of avatar-operator, drawn by make_portrait.py.",
        "size": [SIZE, SIZE],
        # Brows to chin, like a face detector's box; the crown is under the hair.
        "face": [CX - FACE_HALF_W, BROW_Y - 60.0, CX + FACE_HALF_W, CHIN_Y],
        "eyes": [
            [ex - EYE_W / 2, EYE_Y - EYE_H / 2, ex + EYE_W / 2, EYE_Y + 0.75 * EYE_H / 2]
            for ex in (CX - EYE_DX, CX + EYE_DX)
        ],
        "mouth": [CX - hw, MOUTH_Y - UPPER_LIP_H - 2.6, CX + hw, MOUTH_Y + LOWER_LIP_H],
        "lip_line": [
            [CX - hw, _lip_line_y(CX - hw)],
            [CX, MOUTH_Y],
            [CX + hw, _lip_line_y(CX + hw)],
        ],
        "chin": CHIN_Y,
        "nose": NOSE_Y,
    }
    return image, meta


def main() -> None:
    here = pathlib.Path(__file__).resolve().parent
    image, meta = draw()
    cv2.imwrite(
        str(here / "portrait.png"),
        cv2.cvtColor(image, cv2.COLOR_RGB2BGR),
        [cv2.IMWRITE_PNG_COMPRESSION, 9],
    )
    (here / "portrait.json").write_text(json.dumps(meta, indent=2) + "\n")


if __name__ == "__main__":
    main()
