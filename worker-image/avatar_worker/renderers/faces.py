"""Where the face is: the portrait, its eyes and lips, and how it sits in the video frame.

The portrait renderer animates a few regions of a still image, so it needs to know where they
are. Three sources, best first:

1. Metadata: a JSON file next to the image (`avatar.png` → `avatar.json`) with boxes in image
   pixels — `face` [x0, y0, x1, y1] (required); `eyes` [[x0, y0, x1, y1], [...]] (the eye
   openings); `mouth` [x0, y0, x1, y1] (the closed lips); `lip_line` [[x, y] left corner,
   centre, right corner] (where the lips meet); `chin` and `nose` (y of the chin's lowest point
   and of the nostrils). Only `face` is required; the others are estimated from it. The built-in
   portrait ships such a file, so it needs no detector.
2. OpenCV's Haar cascades, which ship inside `opencv-python-headless` 4.x (`cv2.data`): the
   frontal-face cascade finds the face, the eye and smile cascades refine eyes and mouth within
   it, and the darkest rows of the mouth region give the lip line. Nothing is downloaded.
3. A centred default box, with a warning in the log, when nothing is found: the avatar still
   moves, perhaps in the wrong place, rather than the session failing.

`fit` then scales and crops the portrait into the session's frame size (keeping the face
whole, filling any uncovered border with a blurred copy) and maps the layout along with it.
Everything here runs once per session, on the host, with numpy and OpenCV.
"""

from __future__ import annotations

import json
import logging
import math
import pathlib
from typing import Any, NamedTuple

import cv2
import numpy as np
import numpy.typing as npt

logger = logging.getLogger(__name__)

Image = npt.NDArray[np.uint8]  # [H, W, 3] RGB

DEFAULT_PORTRAIT = pathlib.Path(__file__).resolve().parent.parent / "assets" / "portrait.png"
# Where opencv-python(-headless) 4.x keeps its Haar cascades (what `cv2.data.haarcascades` names).
HAAR_CASCADES = pathlib.Path(cv2.__file__).resolve().parent / "data"

# Where features sit inside a frontal-face box (the Haar cascade's, or a metadata `face`), as
# fractions of its width and height. Measured on the built-in portrait's detection and in line
# with the usual proportions of a face; only used where a better source is missing.
_EYE_X, _EYE_Y, _EYE_W, _EYE_H = 0.30, 0.41, 0.21, 0.085
_NOSE_Y = 0.64
_MOUTH_Y, _MOUTH_W, _MOUTH_H = 0.82, 0.32, 0.10
_CHIN_Y = 1.05


class AvatarAssetError(ValueError):
    """The avatar's image, model or metadata is missing or unusable."""


class Box(NamedTuple):
    """An axis-aligned box in pixels: [x0, x1) × [y0, y1)."""

    x0: float
    y0: float
    x1: float
    y1: float

    @property
    def w(self) -> float:
        return self.x1 - self.x0

    @property
    def h(self) -> float:
        return self.y1 - self.y0

    @property
    def cx(self) -> float:
        return (self.x0 + self.x1) / 2

    @property
    def cy(self) -> float:
        return (self.y0 + self.y1) / 2

    def mapped(self, scale: float, dx: float, dy: float) -> Box:
        return Box(
            self.x0 * scale + dx, self.y0 * scale + dy, self.x1 * scale + dx, self.y1 * scale + dy
        )

    @classmethod
    def around(cls, cx: float, cy: float, w: float, h: float) -> Box:
        return cls(cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2)


Point = tuple[float, float]


class FaceLayout(NamedTuple):
    """The regions the portrait renderer animates, in the pixels of one image."""

    face: Box
    eyes: tuple[Box, Box]  # the eye openings, left then right in the image
    mouth: Box  # the closed lips
    lip_line: tuple[Point, Point, Point]  # where the lips meet: left corner, centre, right corner
    chin: float
    nose: float
    source: str  # "metadata", "detector" or "fallback"

    def mapped(self, scale: float, dx: float, dy: float) -> FaceLayout:
        def pt(p: Point) -> Point:
            return (p[0] * scale + dx, p[1] * scale + dy)

        left, centre, right = self.lip_line
        return FaceLayout(
            face=self.face.mapped(scale, dx, dy),
            eyes=(self.eyes[0].mapped(scale, dx, dy), self.eyes[1].mapped(scale, dx, dy)),
            mouth=self.mouth.mapped(scale, dx, dy),
            lip_line=(pt(left), pt(centre), pt(right)),
            chin=self.chin * scale + dy,
            nose=self.nose * scale + dy,
            source=self.source,
        )


def load(path: str | None) -> tuple[Image, FaceLayout]:
    """The portrait at `path` (the built-in one for None) as RGB, and where its face is."""
    image_path = DEFAULT_PORTRAIT if path is None else pathlib.Path(path)
    if not image_path.is_file():
        raise AvatarAssetError(
            f"avatar image {str(image_path)!r} does not exist (spec.avatar.image must name a "
            "PNG or JPEG inside the worker, usually on the mounted avatar volume)"
        )
    bgr = cv2.imread(str(image_path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise AvatarAssetError(f"avatar image {str(image_path)!r} is not an image OpenCV can read")
    image = np.ascontiguousarray(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), dtype=np.uint8)
    meta_path = image_path.with_suffix(".json")
    if meta_path.is_file():
        return image, _from_metadata(meta_path, image)
    return image, detect(image, name=str(image_path))


def _from_metadata(meta_path: pathlib.Path, image: Image) -> FaceLayout:
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, ValueError) as e:
        raise AvatarAssetError(
            f"avatar metadata {str(meta_path)!r} is not readable JSON: {e}"
        ) from e
    if not isinstance(meta, dict):
        raise AvatarAssetError(f"avatar metadata {str(meta_path)!r} must be a JSON object")

    def box(key: str, value: Any) -> Box:
        if (
            not isinstance(value, list)
            or len(value) != 4
            or not all(isinstance(v, int | float) for v in value)
            or value[2] <= value[0]
            or value[3] <= value[1]
        ):
            raise AvatarAssetError(
                f"avatar metadata {str(meta_path)!r}: {key!r} must be [x0, y0, x1, y1] in "
                f"image pixels with x1 > x0 and y1 > y0, got {value!r}"
            )
        return Box(*(float(v) for v in value))

    if "face" not in meta:
        raise AvatarAssetError(f"avatar metadata {str(meta_path)!r} needs a 'face' box")
    face = box("face", meta["face"])
    prior = _from_face_box(face, image, source="metadata")
    eyes = prior.eyes
    if "eyes" in meta:
        value = meta["eyes"]
        if not isinstance(value, list) or len(value) != 2:
            raise AvatarAssetError(
                f"avatar metadata {str(meta_path)!r}: 'eyes' must hold two boxes, got {value!r}"
            )
        left, right = sorted((box("eyes", v) for v in value), key=lambda b: b.cx)
        eyes = (left, right)
    mouth = box("mouth", meta["mouth"]) if "mouth" in meta else prior.mouth
    lip_line = _lip_line_from_image(image, mouth) if "mouth" in meta else prior.lip_line
    if "lip_line" in meta:
        value = meta["lip_line"]
        if (
            not isinstance(value, list)
            or len(value) != 3
            or not all(isinstance(p, list) and len(p) == 2 for p in value)
        ):
            raise AvatarAssetError(
                f"avatar metadata {str(meta_path)!r}: 'lip_line' must be three [x, y] points "
                f"(left corner, centre, right corner), got {value!r}"
            )
        pts = sorted(((float(p[0]), float(p[1])) for p in value), key=lambda p: p[0])
        lip_line = (pts[0], pts[1], pts[2])
    chin = float(meta.get("chin", max(prior.chin, mouth.y1 + mouth.h)))
    nose = float(meta.get("nose", min(prior.nose, mouth.y0 - 0.3 * mouth.h)))
    return FaceLayout(face, eyes, mouth, lip_line, chin, nose, "metadata")


def _cascade(name: str) -> cv2.CascadeClassifier:
    path = HAAR_CASCADES / f"haarcascade_{name}.xml"
    classifier = cv2.CascadeClassifier(str(path))
    if classifier.empty():
        raise AvatarAssetError(
            f"OpenCV's {path.name} is missing (opencv-python-headless 5 no longer ships Haar "
            "cascades; the worker needs 4.x) — or give the portrait a metadata JSON"
        )
    return classifier


def detect(image: Image, name: str = "portrait") -> FaceLayout:
    """Find the face with OpenCV's bundled Haar cascades; a centred guess if there is none."""
    gray = cv2.equalizeHist(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY))
    h, w = gray.shape
    min_side = max(24, min(h, w) // 8)
    faces = _cascade("frontalface_default").detectMultiScale(
        gray, scaleFactor=1.1, minNeighbors=4, minSize=(min_side, min_side)
    )
    if len(faces) == 0:
        logger.warning(
            "no face found in the avatar image; animating a centred default region",
            extra={"image": name, "size": [w, h]},
        )
        return fallback(h, w)
    x, y, fw, fh = (float(v) for v in max(faces, key=lambda f: f[2] * f[3]))
    face = Box(x, y, x + fw, y + fh)
    layout = _from_face_box(face, image, source="detector")

    # Eyes: the two best detections in the face's upper half, one each side of its centre.
    upper = gray[int(y) : int(y + fh * 0.6), int(x) : int(x + fw)]
    found = _cascade("eye").detectMultiScale(upper, 1.1, 3, minSize=(int(fw / 10), int(fw / 10)))
    eyes = list(layout.eyes)
    for ex, ey, ew, eh in found:
        centre_x, centre_y = x + ex + ew / 2, y + ey + eh * 0.55
        side = 0 if centre_x < face.cx else 1
        prior = layout.eyes[side]
        if abs(centre_y - prior.cy) < fh * 0.12 and abs(centre_x - prior.cx) < fw * 0.12:
            # The cascade's box frames the whole eye area; the opening is its middle.
            eyes[side] = Box.around(centre_x, centre_y, ew * 0.62, eh * 0.3)
    # Mouth: a smile-cascade hit near where the mouth should be sets its centre and width.
    lower = gray[int(y + fh * 0.6) : int(min(h, y + fh * 1.1)), int(x) : int(x + fw)]
    mouth = layout.mouth
    hits = _cascade("smile").detectMultiScale(lower, 1.1, 8, minSize=(int(fw / 6), int(fh / 14)))
    best = None
    for mx, my, mw, mh in hits:
        centre_x, centre_y = x + mx + mw / 2, y + fh * 0.6 + my + mh / 2
        dist = math.hypot(centre_x - mouth.cx, centre_y - mouth.cy)
        if dist < fh * 0.12 and 0.2 * fw < mw < 0.55 * fw and (best is None or dist < best[0]):
            best = (dist, Box.around(centre_x, centre_y, mw * 0.8, mouth.h))
    if best is not None:
        mouth = best[1]
    lip_line = _lip_line_from_image(image, mouth)
    return layout._replace(eyes=(eyes[0], eyes[1]), mouth=mouth, lip_line=lip_line)


def fallback(height: int, width: int) -> FaceLayout:
    """A face-sized box in the middle of the image, for when nothing better is known."""
    side = 0.55 * min(height, width)
    face = Box.around(width / 2, height * 0.47, side, side)
    return _from_face_box(face, None, source="fallback")


def _from_face_box(face: Box, image: Image | None, source: str) -> FaceLayout:
    fw, fh = face.w, face.h
    eyes = (
        Box.around(face.x0 + _EYE_X * fw, face.y0 + _EYE_Y * fh, _EYE_W * fw, _EYE_H * fw),
        Box.around(face.x1 - _EYE_X * fw, face.y0 + _EYE_Y * fh, _EYE_W * fw, _EYE_H * fw),
    )
    mouth = Box.around(face.cx, face.y0 + _MOUTH_Y * fh, _MOUTH_W * fw, _MOUTH_H * fh)
    if image is None:
        lip_line = ((mouth.x0, mouth.cy), (mouth.cx, mouth.cy), (mouth.x1, mouth.cy))
    else:
        lip_line = _lip_line_from_image(image, mouth)
    return FaceLayout(
        face=face,
        eyes=eyes,
        mouth=mouth,
        lip_line=lip_line,
        chin=face.y0 + _CHIN_Y * fh,
        nose=face.y0 + _NOSE_Y * fh,
        source=source,
    )


def _lip_line_from_image(image: Image, mouth: Box) -> tuple[Point, Point, Point]:
    """Where the lips meet: the darkest row of the mouth's middle, and of each side of it.

    The seam between closed lips is the darkest line of a mouth under almost any light;
    searching the box's central rows only keeps nostrils and chin shadows out.
    """
    h, w = image.shape[:2]
    gray = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY).astype(np.float32)
    y0 = int(max(0, mouth.y0 + 0.15 * mouth.h))
    y1 = int(min(h, mouth.y1 - 0.15 * mouth.h))
    if y1 - y0 < 3:
        return ((mouth.x0, mouth.cy), (mouth.cx, mouth.cy), (mouth.x1, mouth.cy))

    def darkest(xa: float, xb: float) -> float:
        xs, xe = int(max(0, xa)), int(min(w, xb))
        if xe - xs < 1:
            return mouth.cy
        rows = cv2.GaussianBlur(gray[y0:y1, xs:xe], (1, 3), 0).mean(axis=1)
        return y0 + float(np.argmin(rows))

    centre = darkest(mouth.cx - 0.15 * mouth.w, mouth.cx + 0.15 * mouth.w)
    left = darkest(mouth.x0 + 0.08 * mouth.w, mouth.x0 + 0.25 * mouth.w)
    right = darkest(mouth.x1 - 0.25 * mouth.w, mouth.x1 - 0.08 * mouth.w)
    # Corners sit at most a quarter of the mouth's height off the centre (a smile or a frown).
    limit = 0.25 * mouth.h
    left = min(max(left, centre - limit), centre + limit)
    right = min(max(right, centre - limit), centre + limit)
    return ((mouth.x0, left), (mouth.cx, centre), (mouth.x1, right))


def fit(image: Image, layout: FaceLayout, width: int, height: int) -> tuple[Image, FaceLayout]:
    """Scale and crop the portrait to `width`×`height`, keeping the whole face in view.

    Like a video call's tile: the image covers the frame, centred on the face, unless that
    would crop the face (a landscape frame from a portrait photo); then it is scaled down until
    the face fits, and the uncovered sides show a blurred, darkened copy of the image.
    """
    ih, iw = image.shape[:2]
    face = layout.face
    cover = max(width / iw, height / ih)
    # Keep the face box (brows to chin) and a margin for the head's motion inside the frame:
    # 1.15 lets a 16:9 frame of a square portrait fill without side bars.
    margin = 1.15
    scale = min(cover, width / (face.w * margin), height / (face.h * margin))
    sw, sh = max(1, round(iw * scale)), max(1, round(ih * scale))

    def offset(frame: int, scaled: int, centre: float) -> int:
        if scaled >= frame:
            return int(min(0, max(frame - scaled, round(frame / 2 - centre))))
        return (frame - scaled) // 2

    dx = offset(width, sw, face.cx * scale)
    dy = offset(height, sh, (face.cy + 0.08 * face.h) * scale)  # leave the jaw room to drop
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC
    scaled = cv2.resize(image, (sw, sh), interpolation=interp)
    if sw >= width and sh >= height:
        canvas = np.ascontiguousarray(scaled[-dy : -dy + height, -dx : -dx + width])
    else:
        cw, ch = math.ceil(iw * cover), math.ceil(ih * cover)
        back = cv2.resize(image, (cw, ch), interpolation=cv2.INTER_AREA)
        bx, by = (cw - width) // 2, (ch - height) // 2
        back = back[by : by + height, bx : bx + width]
        sigma = max(2.0, 0.04 * max(width, height))
        canvas = (cv2.GaussianBlur(back, (0, 0), sigma).astype(np.float32) * 0.9).astype(np.uint8)
        # Paste the scaled image where it lands in the frame.
        x0, y0 = max(0, dx), max(0, dy)
        x1, y1 = min(width, dx + sw), min(height, dy + sh)
        canvas[y0:y1, x0:x1] = scaled[y0 - dy : y1 - dy, x0 - dx : x1 - dx]
    return np.ascontiguousarray(canvas), layout.mapped(scale, dx, dy)
