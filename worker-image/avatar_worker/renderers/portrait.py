"""The default renderer: a portrait whose mouth follows the audio and which blinks and breathes.

Per batch of frames:

1. `features.MouthTracker` turns each audio window into a smoothed mouth shape (open, wide,
   round) and a slow speech envelope; `idle.IdleMotion` adds blinks and head motion.
2. `_Rig.draw` draws the face's region of interest (ROI) only — the rest of the frame never
   changes — in layers, each as cheap as what it has to show:
   - head: the whole ROI follows the head's small drift, nod and roll. Each row of the ROI
     slides by its own sub-pixel offset, faded to nothing above the forehead and below the
     chin; the roll is the sideways slide of rows growing with their height above the neck
     (a rotation's other half, rows tilting, is under 1.3 px at the face's edge for the
     largest roll and is left out). Offsets are rounded to 1/8 px, and the padded ROI is
     prepared once per session at all 8 × 8 sub-pixel positions (bilinear, already uint8),
     so the whole layer is one gather of rows: no arithmetic per pixel. In the ROI's left
     and right margins the motion fades out column by column into the still frame; those
     two strips are sampled like the mouth.
   - mouth (only in chunks where a mouth is open): the lips part along the lip line
     (lens-shaped: wide in the middle, closed at the corners), the lower lip and chin drop
     with the jaw, the upper lip rises a little, and the lips spread (wide) or narrow
     (round). This inverse warp, composed with the head's, is computed over the mouth's box
     only — and below the lips, where only the chin's drop is left, with a handful of
     operations. The warp is discontinuous at the lip line: pixels that fall between the
     parted lips get no image content; they are painted as the inside of a mouth (dark
     cavity, upper teeth, tongue) with a one-pixel anti-aliased edge, in the small box the
     chunk's widest opening can reach.
   - eyes (only in chunks with a blink under way): the skin between brow and eye slides
     down over the eye (the upper lid, lashes included, moves down with it) and back up.
3. Each chunk's ROI (uint8) is pasted into copies of the cached frame.

Every displacement grows by less than a pixel per pixel, so the warp never folds over itself
(which would show the lower lip twice). Float pixels carry +0.5 so that the float → uint8 cast
(a truncation) rounds.

The warps are the same torch code on CPU and CUDA. Only the last step differs
(`_Rig._sample_into`): on the CPU, OpenCV's `remap` samples the uint8 image straight into the
frame (fixed-point bilinear, SIMD), ~3× faster there than `grid_sample` and the float planes it
returns; on CUDA `grid_sample` does it, and `gpu.Downloader` overlaps the device→host copy of
one chunk with rendering the next. The two agree to a level or two (tested on the CPU, where
both run). With a zero mouth shape and no blink a frame is the head layer alone, so a silent
avatar's mouth is exactly the reference image's, while its head keeps moving: the picture
never freezes.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from typing import NamedTuple

import cv2
import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F

from avatar_worker import renderers
from avatar_worker.renderers import contract, faces, features, gpu, idle

# Mouth geometry, as fractions of the mouth's (lips') width.
JAW_DROP = 0.34  # lower lip's drop when fully open
UPPER_LIFT = 0.16  # upper lip's rise, as a fraction of the jaw drop
WIDE_STRETCH = 0.12  # lips spread by this fraction when fully wide…
ROUND_SQUEEZE = 0.26  # …and narrow by this when fully round, the opening rounder
TEETH = 0.08  # visible height of the upper teeth
BROAD = 2.2  # the chin's drop reaches this many half mouth-widths to each side

INNER_DARK = (48.0, 14.0, 20.0)  # the back of the mouth
INNER_EDGE = (104.0, 36.0, 44.0)  # just inside the lips
TONGUE = (150.0, 62.0, 72.0)
TEETH_COLOUR = (236.0, 232.0, 222.0)

LID_SKIN = 0.85  # of the eye's height: the skin above the eye that slides down in a blink
HEAD_ROOM = 0.03  # of face height (+2 px): how far the head can carry the mouth and eyes
PHASES = 8  # head positions per pixel: the head moves in 1/8 px steps…
CACHE_BYTES = 32 * 2**20  # …unless the ROI at 8 × 8 offsets would take more: then 4 or 2

TINY = 1e-20  # a floor for square roots: √0 takes a slow path on a CPU; √(1e-20) = 1e-10 does not

CPU_CHUNK = 8  # frames rendered at once: amortises torch's per-operation cost
CUDA_CHUNK = 32  # several chunks per call, so copies overlap with rendering

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float32]

_NO_MAP = np.empty((0, 0), np.float32)  # OpenCV's "no second map"


def _smoothstep_(x: torch.Tensor) -> torch.Tensor:
    """3x² − 2x³ of x clamped to [0, 1]; overwrites `x` (a temporary) on the way."""
    x = x.clamp_(0.0, 1.0)
    x2 = x.square()
    return x2.mul(3.0).addcmul_(x2, x, value=-2.0)


def _step_(x: torch.Tensor) -> torch.Tensor:
    """1 where x ≥ 0, else 0 (for |x| ≥ 1e-30), in place: arithmetic is several times
    cheaper than a comparison and a cast on a CPU (measured here)."""
    return x.mul_(1e30).add_(1.0).clamp_(0.0, 1.0)


def _fade(
    v: npt.NDArray[np.float64], lo: float, inner_lo: float, inner_hi: float, hi: float
) -> npt.NDArray[np.float64]:
    """0 at `lo`, rising smoothly to 1 at `inner_lo`, 1 until `inner_hi`, 0 again at `hi`."""

    def step(x: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        x = np.clip(x, 0.0, 1.0)
        return x * x * (3.0 - 2.0 * x)

    up = step((v - lo) / max(inner_lo - lo, 1.0))
    return up * (1.0 - step((v - inner_hi) / max(hi - inner_hi, 1.0)))


def _store_planes(dst: torch.Tensor, src: torch.Tensor) -> None:
    """Write float planes [n, 3, h, w] (carrying +0.5) into uint8 pixels `dst` [n, h, w, 3]."""
    if dst.device.type == "cpu":
        # Interleaving planes is a transpose with an inner dimension of 3, which numpy and
        # torch do element by element; OpenCV's merge is ~5× faster (measured here).
        planes = np.empty(src.shape, np.uint8)
        np.copyto(planes, src.numpy(), casting="unsafe")
        pixels = dst.numpy()
        for i, frame in enumerate(planes):
            pixels[i] = cv2.merge(list(frame))
    else:
        dst.copy_(src.permute(0, 2, 3, 1))


class _Slice(NamedTuple):
    """A sub-box of the ROI, in ROI pixel indices: [y0, y1) × [x0, x1)."""

    y0: int
    y1: int
    x0: int
    x1: int

    @classmethod
    def clipped(cls, x0: float, y0: float, x1: float, y1: float, w: int, h: int) -> _Slice:
        ix0 = min(max(0, math.floor(x0)), w - 1)
        iy0 = min(max(0, math.floor(y0)), h - 1)
        return cls(
            iy0, max(iy0 + 1, min(h, math.ceil(y1))), ix0, max(ix0 + 1, min(w, math.ceil(x1)))
        )

    @property
    def at(self) -> tuple[slice, slice]:
        return slice(self.y0, self.y1), slice(self.x0, self.x1)

    def between(self, x0: int, x1: int) -> _Slice:
        """This box without the columns left of `x0` and from `x1` on."""
        left = min(max(self.x0, x0), max(x0, x1 - 1))
        return _Slice(self.y0, self.y1, left, max(left + 1, min(self.x1, x1)))

    def within(self, outer: _Slice) -> _Slice:
        """This box clipped to `outer`, in `outer`'s own indices."""
        y0, x0 = max(self.y0, outer.y0), max(self.x0, outer.x0)
        y1, x1 = max(y0 + 1, min(self.y1, outer.y1)), max(x0 + 1, min(self.x1, outer.x1))
        return _Slice(y0 - outer.y0, y1 - outer.y0, x0 - outer.x0, x1 - outer.x0)


class _Cavity(NamedTuple):
    """Where the lips parted, per pixel of the opening's box: [n, h, w] each."""

    alpha: torch.Tensor  # coverage by the cavity (anti-aliased)
    from_top: torch.Tensor  # distance below the upper lip's edge (px)
    gap: torch.Tensor  # height of the opening in this column (px)
    lens: torch.Tensor  # 1 on the mouth's centre line … 0 at its corners
    u2: torch.Tensor  # (distance from the centre line / half the mouth's width)²


class _Eye(NamedTuple):
    box: faces.Box  # the eye opening, ROI px
    lid_top: float  # ROI y above which nothing moves in a blink
    region: _Slice  # where the warp is computed
    xs: torch.Tensor  # [1, 1, w] the region's x, ROI px
    ys: torch.Tensor  # [1, h, 1] and its y


class _Side(NamedTuple):
    """A margin of the ROI, where the head's motion fades out into the still frame."""

    cols: slice
    xs: torch.Tensor  # [1, 1, w] its x, in source pixels
    ys: torch.Tensor  # [1, h, 1] its y, in source pixels
    weight: torch.Tensor  # [1, 1, w] how much of the head's motion it follows (0 … 1)


class _Rig:
    """Precomputed geometry and pixels of one portrait in one frame size; draws batches of ROIs.

    Coordinates are ROI pixels: (0, 0) is the centre of the ROI's top-left pixel.
    """

    def __init__(
        self, frame: npt.NDArray[np.uint8], layout: faces.FaceLayout, device: torch.device
    ) -> None:
        self.device = device
        height, width = frame.shape[:2]
        face, mouth = layout.face, layout.mouth
        self.face_h = face.h
        # The ROI: the face, plus room for the head to move and the jaw to drop. The lower
        # lip's lens shape widens into the chin's drop over the whole lip-to-chin distance, and
        # the drop fades out below the chin over at least twice its size: both keep the warp's
        # slope under one.
        (_, left_y), (cx, cy), (_, right_y) = layout.lip_line
        jaw = JAW_DROP * mouth.w
        chin = max(layout.chin, mouth.y1 + 1.0)
        lip_to_chin = max(2.0, chin - cy, 1.6 * jaw)
        neck = max(2.0 * jaw, 0.5 * lip_to_chin)
        margin = HEAD_ROOM * face.h + 2.0
        # The head's motion fades out over the ROI's margins: 8 % of the face's width at the
        # sides, the forehead's top tenth above (a few pixels of motion over 15–25 pixels).
        rx0 = max(0, math.floor(face.x0 - 0.08 * face.w))
        rx1 = min(width, math.ceil(face.x1 + 0.08 * face.w))
        ry0 = max(0, math.floor(face.y0))
        ry1 = min(height, math.ceil(chin + neck + margin + 1.0))
        rx1, ry1 = max(rx1, rx0 + 2), max(ry1, ry0 + 2)
        self.box = (rx0, ry0, rx1, ry1)
        h, w = ry1 - ry0, rx1 - rx0
        self.h, self.w = h, w

        # The source: the ROI and `pad` pixels round it (the frame's edge repeated beyond it),
        # which is as far as the head can carry anything.
        pad = math.ceil(margin) + 1
        self.pad = pad
        src_h, src_w = h + 2 * pad, w + 2 * pad
        self.src_h, self.src_w = src_h, src_w
        edged = np.pad(frame, ((pad, pad + 1), (pad, pad + 1), (0, 0)), mode="edge")
        crop = torch.from_numpy(edged[ry0 : ry1 + 2 * pad + 1, rx0 : rx1 + 2 * pad + 1].copy())
        crop_f = crop.to(torch.float32) + 0.5  # [src_h + 1, src_w + 1, 3]
        # What the mouth, eyes and margins are sampled from: uint8 pixels for OpenCV's remap
        # (the CPU's sampler), float planes for grid_sample (CUDA's); see `_sample_into`.
        self.remap = device.type == "cpu"
        self.src_pixels = np.ascontiguousarray(crop[:src_h, :src_w].numpy())
        self.src_planes = crop_f[:src_h, :src_w].permute(2, 0, 1).unsqueeze(0).contiguous()
        self.src_planes = self.src_planes.to(device)
        # grid_sample's normalised coordinates (align_corners=False) of a source position x:
        # (2x + 1)/src_w − 1.
        self.grid_scale = torch.tensor([2.0 / src_w, 2.0 / src_h], device=device)
        self.grid_offset = torch.tensor([1.0 / src_w - 1.0, 1.0 / src_h - 1.0], device=device)

        # The head layer's source: the padded ROI at every 1/phases-pixel offset, bilinear,
        # rounded to uint8: [phases (y), phases (x), src_h, src_w, 3]. 15 MB for a 512×512
        # frame; a face filling 720p would take 86 MB at 1/8 px, so large faces move in
        # coarser steps (a quarter pixel of a face three times the size is as fine).
        phases = PHASES
        while phases > 2 and phases * phases * src_h * src_w * 3 > CACHE_BYTES:
            phases //= 2
        self.phases = phases
        steps = torch.arange(phases, dtype=torch.float32) / phases
        by_x = torch.lerp(crop_f[None, :, :-1], crop_f[None, :, 1:], steps.view(-1, 1, 1, 1))
        shifted = torch.empty((phases, phases, src_h, src_w, 3), dtype=torch.uint8)
        for fy in range(phases):
            rows = torch.lerp(by_x[:, :-1], by_x[:, 1:], float(steps[fy]))
            shifted[fy].copy_(rows)  # the cast truncates; the +0.5 makes it round
        self.shifted = shifted.to(device)
        # Every run of `w` pixels in it, as overlapping rows of a view: a ROI row that starts
        # at pixel i of the flattened cache is row i of this view, so a frame is one gather.
        flat = self.shifted.view(-1)
        self.runs = flat.as_strided((flat.numel() // 3 - w + 1, w * 3), (3, 1))

        # Head motion: rows slide by the head's offset, roll adding a sideways slide that grows
        # with the row's height above the neck; all of it fades out above the forehead and
        # below the chin (`head_weight`), and into the still frame at the sides (`_Side`).
        ys = np.arange(ry0, ry1, dtype=np.float64)
        top = min(face.y0 + 0.1 * face.h, min(e.y0 for e in layout.eyes) - 0.5 * face.h * HEAD_ROOM)
        self.head_weight = _fade(ys, ry0 - 0.5, top, layout.chin, ry1 - 0.5)
        self.from_neck = ys - (layout.chin + 0.1 * face.h)
        self.row_index = np.arange(h, dtype=np.int64) + pad
        self.sides: list[_Side] = []
        side_weight = _fade(
            np.arange(rx0, rx1, dtype=np.float64), rx0 - 0.5, face.x0, face.x1, rx1 - 0.5
        )
        inner = np.flatnonzero(side_weight >= 1.0)
        left, right = (int(inner[0]), int(inner[-1]) + 1) if len(inner) else (w // 2, w // 2)
        for cols in (slice(0, left), slice(right, w)):
            if cols.stop <= cols.start:
                continue
            weight = torch.from_numpy(side_weight[cols].astype(np.float32))
            self.sides.append(
                _Side(
                    cols,
                    torch.arange(cols.start + pad, cols.stop + pad, dtype=torch.float32)
                    .view(1, 1, -1)
                    .to(device),
                    torch.arange(pad, h + pad, dtype=torch.float32).view(1, -1, 1).to(device),
                    weight.view(1, 1, -1).to(device),
                )
            )

        # Mouth, in ROI px.
        cx, cy, chin = cx - rx0, cy - ry0, chin - ry0
        self.mouth_cx = cx
        self.mouth_hw = max(1.0, mouth.w / 2)
        self.lip_y = cy
        self.lip_bend = (left_y + right_y) / 2 - (cy + ry0)  # corners vs centre (<0: a smile)
        self.jaw = jaw
        self.chin = chin
        self.lip_to_chin = lip_to_chin
        self.neck = neck
        self.upper = UPPER_LIFT * jaw
        self.teeth = TEETH * mouth.w
        self.lower_lip = max(2.0, mouth.y1 - ry0 - cy)
        self.upper_room = max(2.0, cy - (max(layout.nose, mouth.y0 - 0.6 * mouth.h) - ry0))
        self.mouth_region = _Slice.clipped(
            cx - BROAD * self.mouth_hw - margin,
            cy - self.upper_room - margin,
            cx + BROAD * self.mouth_hw + margin,
            chin + self.neck + margin,
            w,
            h,
        )
        # The opening is much smaller than the region that moves: paint only there.
        opening = _Slice.clipped(
            cx - self.mouth_hw - margin - 1.0,
            cy + min(0.0, self.lip_bend) - self.upper - margin - 2.0,
            cx + self.mouth_hw + margin + 1.0,
            cy + max(0.0, self.lip_bend) + self.jaw + margin + 2.0,
            w,
            h,
        )
        self.mouth_region = self.mouth_region.between(left, right)
        self.opening = opening.within(self.mouth_region)  # in the mouth region's indices
        region = self.mouth_region
        # The lips spread or narrow within `squeeze_reach` of the mouth's centre (a smooth
        # bump, zero at the region's sides: no seam there), fading as a Gaussian over
        # `squeeze_height` above and below the lip line.
        self.squeeze_reach = BROAD * self.mouth_hw
        self.squeeze_height = 1.2 * self.lower_lip + 2.0
        # Rows far enough below the lips that the lens has blended into the chin's drop and
        # the squeeze is under 1/16 px: there the warp is the chin's drop alone (cheap).
        squeeze_px = ROUND_SQUEEZE * self.squeeze_reach
        below = max(
            self.lip_to_chin + max(0.0, self.lip_bend) * BROAD * BROAD,
            self.squeeze_height * math.sqrt(math.log(max(1.0, 16.0 * squeeze_px))),
        )
        near = math.ceil(cy + below + pad) - region.y0
        self.near_rows = min(region.y1 - region.y0, max(near, self.opening.y1))

        def axis(lo: int, hi: int, centre: float = 0.0) -> torch.Tensor:
            return torch.arange(lo, hi, dtype=torch.float32, device=device) - centre

        self.mouth_dx = axis(region.x0, region.x1, cx).view(1, 1, -1)  # x − the mouth's centre
        self.mouth_dy = axis(region.y0, region.y1, cy).view(1, -1, 1)  # y − the lip line

        def colour(rgb: tuple[float, float, float]) -> torch.Tensor:
            return torch.tensor(rgb, dtype=torch.float32, device=device).view(1, 3, 1, 1) + 0.5

        self.inner_dark = colour(INNER_DARK)
        self.inner_edge = colour(INNER_EDGE)
        self.tongue = colour(TONGUE)
        self.teeth_colour = colour(TEETH_COLOUR)

        # Eyes; their regions stop where the mouth's begins.
        self.eyes: list[_Eye] = []
        for eye in layout.eyes:
            box = eye.mapped(1.0, -rx0, -ry0)
            lid_top = box.y0 - LID_SKIN * box.h
            bottom = min(box.y1 + margin + 1.0, region.y0)
            eye_region = _Slice.clipped(
                box.x0 - 0.2 * box.w - margin,
                lid_top - margin,
                box.x1 + 0.2 * box.w + margin,
                bottom,
                w,
                h,
            )
            eye_region = eye_region.between(left, right)
            xs = axis(eye_region.x0, eye_region.x1).view(1, 1, -1)
            eye_ys = axis(eye_region.y0, eye_region.y1).view(1, -1, 1)
            self.eyes.append(_Eye(box, lid_top, eye_region, xs, eye_ys))

        self._out: torch.Tensor | None = None  # the CPU's reused output buffer

    def head_offsets(
        self, head_x: FloatArray, head_y: FloatArray, roll: FloatArray
    ) -> tuple[IntArray, IntArray]:
        """Per frame and ROI row, where the row's pixels come from relative to where they are
        shown, in 1/phases px: (x, y), int64 [n, h] each. Head offsets in px, roll in radians."""
        weight = self.head_weight[None, :]
        # Inverse warp: a pixel shows what was `head` behind it (and what the roll brought).
        sx = weight * (-head_x[:, None] + roll[:, None] * self.from_neck[None, :])
        sy = weight * -head_y[:, None]
        limit = (self.pad - 1) * self.phases
        qx = np.clip(np.rint(sx * self.phases), -limit, limit).astype(np.int64)
        qy = np.clip(np.rint(sy * self.phases), -limit, limit).astype(np.int64)
        return qx, qy

    def draw(
        self, qx: IntArray, qy: IntArray, mouth: FloatArray, blink: FloatArray
    ) -> torch.Tensor:
        """uint8 [n, h, w, 3] ROIs for per-frame head offsets (`head_offsets`), mouth shapes
        [n, 3] (open, wide, round) and blinks [n]."""
        n, h, w = len(qx), self.h, self.w
        if self.device.type == "cpu":
            if self._out is None or len(self._out) < n:
                self._out = torch.empty((n, h, w, 3), dtype=torch.uint8)
            out = self._out[:n]
        else:  # a fresh tensor: the previous chunk may still be on its way to the host
            out = torch.empty((n, h, w, 3), dtype=torch.uint8, device=self.device)

        phases = self.phases
        ix, fx = np.divmod(qx, phases)
        iy, fy = np.divmod(qy, phases)
        starts = ((fy * phases + fx) * self.src_h + self.row_index + iy) * self.src_w
        starts += self.pad + ix
        index = torch.from_numpy(starts.reshape(-1)).to(self.device)
        torch.index_select(self.runs, 0, index, out=out.view(n * h, w * 3))
        shift_x = torch.from_numpy(qx.astype(np.float32) / phases).to(self.device)
        shift_y = torch.from_numpy(qy.astype(np.float32) / phases).to(self.device)
        # In the margins the head's motion fades out column by column (which rows alone
        # cannot do): sampled like the mouth. The mouth and eyes stay clear of them.
        for side in self.sides:
            grid = torch.empty((n, h, side.cols.stop - side.cols.start, 2), device=self.device)
            torch.addcmul(side.xs, shift_x[:, :, None], side.weight, out=grid[..., 0])
            torch.addcmul(side.ys, shift_y[:, :, None], side.weight, out=grid[..., 1])
            self._sample_into(out[:, :, side.cols], grid)

        # Mouths and blinks are drawn for the frames that have them, so a frame's pixels do
        # not depend on the frames it was batched with.
        talking = np.flatnonzero((mouth > 0.0).any(axis=1))
        if len(talking):
            shapes = torch.from_numpy(mouth[talking]).to(self.device).view(-1, 3, 1, 1)
            bounds = (
                float(mouth[talking, 0].max()),
                float(qx[talking].min()) / phases,
                float(qx[talking].max()) / phases,
                float(qy[talking].min()) / phases,
                float(qy[talking].max()) / phases,
            )
            with self._frames(out, talking) as (part, frames):
                self._mouth(part, shift_x[frames], shift_y[frames], shapes, bounds)
        blinking = np.flatnonzero(blink > 0.0)
        if len(blinking):
            lids = torch.from_numpy(blink[blinking]).to(self.device).view(-1, 1, 1)
            with self._frames(out, blinking) as (part, frames):
                for eye in self.eyes:
                    self._eye(part, eye, shift_x[frames], shift_y[frames], lids)
        return out

    @contextlib.contextmanager
    def _frames(
        self, out: torch.Tensor, which: IntArray
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor | slice]]:
        """Some frames of `out` to draw into, and how to index per-frame tensors for them:
        `out` itself when it is all of them, else a copy that is written back on exit."""
        if len(which) == len(out):
            yield out, slice(None)
            return
        index = torch.from_numpy(which).to(self.device)
        part = out.index_select(0, index)
        yield part, index
        out.index_copy_(0, index, part)

    def _put(self, grid: torch.Tensor, values: torch.Tensor, axis: int, origin: float) -> None:
        """Fill one axis of a sampling grid with the source positions of ROI positions
        `origin + values`."""
        # One pass straight into the grid's strided channel: no temporary, no torch.stack.
        torch.add(values, origin + self.pad, out=grid[..., axis])

    def _sample_into(self, out: torch.Tensor, grid: torch.Tensor) -> None:
        """Bilinear samples of the source at the grid's positions [n, h, w, 2] into the
        uint8 pixels `out` [n, h, w, 3]."""
        if self.remap:
            # OpenCV's remap samples uint8 pixels straight into the frame (fixed-point, SIMD):
            # ~3× faster on a CPU than grid_sample's float planes and their interleaving
            # (measured here); the two agree to a level or two.
            pixels, positions = out.numpy(), grid.numpy()
            for i in range(len(pixels)):
                drawn = cv2.remap(
                    self.src_pixels,
                    positions[i],
                    _NO_MAP,  # the positions are x, y pairs: one map is enough
                    cv2.INTER_LINEAR,
                    dst=pixels[i],
                    borderMode=cv2.BORDER_REPLICATE,
                )
                # OpenCV writes into a strided view of the frame; were it ever to refuse the
                # layout, it would return new pixels instead.
                if not np.may_share_memory(drawn, pixels[i]):
                    pixels[i] = drawn
            return
        grid = grid.mul_(self.grid_scale).add_(self.grid_offset)
        planes = F.grid_sample(
            self.src_planes.expand(len(grid), -1, -1, -1),
            grid,
            mode="bilinear",
            padding_mode="border",
            align_corners=False,
        )
        _store_planes(out, planes)

    def _mouth(
        self,
        out: torch.Tensor,
        shift_x: torch.Tensor,
        shift_y: torch.Tensor,
        shapes: torch.Tensor,
        bounds: tuple[float, float, float, float, float],
    ) -> None:
        """Draw the mouth's region of `out` for mouth shapes [n, 3, 1, 1]; `bounds` are the
        chunk's largest opening and its head offsets' range (x min, x max, y min, y max)."""
        open_, wide, round_ = shapes[:, 0], shapes[:, 1], shapes[:, 2]
        region = self.mouth_region
        ys, xs = region.at
        n, k = len(out), self.near_rows
        grid = torch.empty((n, ys.stop - ys.start, xs.stop - xs.start, 2), device=self.device)
        # Where the head puts each pixel, relative to the mouth's centre and the lip line.
        dy = self.mouth_dy + shift_y[:, ys, None]  # [n, h, 1]
        drop_scale = open_ * -self.jaw
        # 1 down to the chin, fading to 0 over the neck below it.
        fall = _smoothstep_((dy - (self.chin + self.neck - self.lip_y)) * (-1.0 / self.neck))

        # Near the lips: every part of the shape.
        dx = self.mouth_dx + shift_x[:, ys.start : ys.start + k, None]  # [n, k, w]
        dy_n = dy[:, :k]
        # The lips spread or narrow within `squeeze_reach` of the centre, fading above and
        # below the lip line: sx = dx · (1 − squeeze · reach(dx) · e^−(dy/height)²).
        sx = (dx * (1.0 / self.squeeze_reach)).square_().neg_().add_(1.0).clamp_(min=0.0)
        squeeze = WIDE_STRETCH * wide - ROUND_SQUEEZE * round_
        across = torch.exp(-(dy_n * (1.0 / self.squeeze_height)).square()) * -squeeze
        sx = sx.square_().mul_(across).add_(1.0).mul_(dx)  # relative to the mouth's centre
        u2 = (sx * (1.0 / self.mouth_hw)).square_().clamp_(max=BROAD * BROAD)
        below_lip = torch.add(dy_n, u2, alpha=-self.lip_bend)  # px below the lip line
        # The opening's outline: a lens, √(1 − u²), fuller (rounder corners) for rounded lips,
        # up to (1 − u²)^0.375. Square roots: a fractional pow costs ten times more on a CPU,
        # and a square root of zero four times more than of anything else (MKL's slow path).
        root = torch.rsub(u2, 1.0).clamp_(min=TINY).sqrt_()
        lens = root.sqrt().sub_(root).mul_(0.5 * round_).add_(root)
        # Lower branch: the lower lip follows the lens; further down the chin drops whole.
        broad = (u2 * (-1.0 / (BROAD * BROAD))).add_(1.0).square_()
        blend = _smoothstep_(below_lip * (1.0 / self.lip_to_chin))
        sink = torch.lerp(lens, broad, blend).mul_(drop_scale * fall[:, :k])  # −drop
        # Upper branch: the upper lip rises a little, fading out towards the nose.
        lift = _smoothstep_((below_lip * (1.0 / self.upper_room)).add_(1.0))
        lift = lift.mul_(lens).mul_(open_ * self.upper)
        below = _step_(below_lip.clone())
        sy = torch.lerp(lift, sink, below).add_(dy_n)  # relative to the lip line's centre
        self._put(grid[:, :k], sx, 0, self.mouth_cx)
        self._put(grid[:, :k], sy, 1, self.lip_y)

        # Further down: the chin's drop, wide and whole (the lens's corners have blended out).
        if k < grid.shape[1]:
            dx_c = self.mouth_dx + shift_x[:, ys.start + k : ys.stop, None]
            broad_c = (dx_c * (1.0 / self.squeeze_reach)).square_().neg_().add_(1.0)
            broad_c = broad_c.clamp_(min=0.0).square_()
            sy_c = broad_c.mul_(drop_scale * fall[:, k:]).add_(dy[:, k:])
            self._put(grid[:, k:], dx_c, 0, self.mouth_cx)
            self._put(grid[:, k:], sy_c, 1, self.lip_y)

        self._sample_into(out[:, ys, xs], grid)
        # Pixels whose source crossed the lip line lie between the lips: the mouth's inside.
        oy, ox = self._opening(*bounds)
        line = u2[:, oy, ox] * self.lip_bend  # the lip line, relative to its centre
        lens_o = lens[:, oy, ox]
        sign = below[:, oy, ox].mul(2.0).sub_(1.0)
        cavity = _Cavity(
            alpha=line.sub(sy[:, oy, ox]).mul_(sign).clamp_(0.0, 1.0),
            from_top=(lens_o * (open_ * self.upper)).sub_(line).add_(dy_n[:, oy]),
            gap=lens_o * (open_ * (self.upper + self.jaw)),
            lens=lens_o,
            u2=u2[:, oy, ox],
        )
        painted = out[:, ys, xs][:, oy, ox]
        planes = painted.permute(0, 3, 1, 2).to(
            torch.float32, memory_format=torch.contiguous_format
        )
        planes = planes.add_(0.5)
        self._paint_cavity(planes, cavity, wide.unsqueeze(1))
        _store_planes(painted, planes)

    def _opening(
        self, open_: float, x0: float, x1: float, y0: float, y1: float
    ) -> tuple[slice, slice]:
        """Where the lips can have parted, in the mouth region's indices, for the largest
        opening of a chunk and its head offsets' range."""
        region, hw, bend = self.mouth_region, self.mouth_hw, self.lip_bend
        # |sx| < hw needs |dx| < hw / (1 − WIDE_STRETCH) at most; the head moves dx by x0…x1.
        reach = hw / (1.0 - WIDE_STRETCH) + 1.0
        box = _Slice.clipped(
            self.mouth_cx - reach - x1 - region.x0,
            self.lip_y + min(0.0, bend) - open_ * self.upper - y1 - 1.0 - region.y0,
            self.mouth_cx + reach - x0 - region.x0,
            self.lip_y + max(0.0, bend) + open_ * self.jaw - y0 + 2.0 - region.y0,
            region.x1 - region.x0,
            self.near_rows,
        )
        return box.at

    def _paint_cavity(self, region: torch.Tensor, cavity: _Cavity, wide: torch.Tensor) -> None:
        """Paint the inside of the mouth between the parted lips into `region` (in place)."""
        a, from_top, gap, lens, u2 = (t.unsqueeze(1) for t in cavity)
        from_bottom = gap - from_top
        # Dark inside, redder for a couple of pixels just inside the lips.
        inside = torch.minimum(from_top, from_bottom).mul_(1.0 / 2.5).clamp_(0.0, 1.0)
        colour = torch.lerp(self.inner_edge, self.inner_dark, inside)
        # The tongue: a low, dim hump behind the lower lip, seen when the mouth is well open.
        tongue = (gap * lens).mul_(0.25).sub_(from_bottom).sub_(2.0).clamp_(0.0, 1.0)
        colour = colour.lerp_(self.tongue, tongue.mul_(0.55))
        # The upper teeth, just under the upper lip, not reaching the corners; shaded under
        # the lip and towards the sides.
        across = (u2 * (-1.0 / 0.55)).add_(1.0).clamp_(min=TINY)
        # Spread lips ("ee", "s") show more of the teeth.
        teeth_h = torch.minimum(across.sqrt().mul_(self.teeth * (1.0 + 0.6 * wide)), 0.6 * gap)
        teeth = (teeth_h - from_top).clamp_(0.0, 1.0)
        depth = (from_top / teeth_h.clamp(min=1.0)).clamp_(0.0, 1.0)
        shade = across.mul_(0.38).add_(0.62).mul_(depth.mul_(0.2).add_(0.8))
        colour = colour.lerp_(self.teeth_colour * shade, teeth)
        region.lerp_(colour, a)

    def _eye(
        self,
        out: torch.Tensor,
        eye: _Eye,
        shift_x: torch.Tensor,
        shift_y: torch.Tensor,
        blink: torch.Tensor,
    ) -> None:
        """Draw one eye's region of `out`: the upper lid comes down by `blink` [n, 1, 1]."""
        ys, xs = eye.region.at
        qx = eye.xs + shift_x[:, ys, None]  # where the head puts each pixel
        qy = eye.ys + shift_y[:, ys, None]
        box = eye.box
        u = (qx - box.cx).mul_(1.0 / max(1.0, box.w / 2))
        arc = u.square().neg_().add_(1.0).clamp_(min=TINY).sqrt_()
        top = (arc * (box.y0 - box.cy)).add_(box.cy)
        shut = (arc * (0.92 * (box.y1 - box.cy))).add_(box.cy)  # the lid meets the lower lid
        inside_x = _smoothstep_(u.abs_().sub_(1.35).mul_(-1.0 / 0.35))
        lid = shut.sub_(top).mul_(inside_x.mul_(blink)).add_(top)
        # The skin between lid_top and the eye's top edge stretches down to the lid's new edge:
        # sy = lid_top + (qy − lid_top) · ratio where it is covered, qy elsewhere.
        from_lid_top = qy - eye.lid_top  # [n, h, 1]
        covered = _step_(lid - qy).mul_((from_lid_top >= 0.0).to(torch.float32))
        ratio = top.sub_(eye.lid_top).div_(lid.sub_(eye.lid_top).clamp_(min=1e-3)).sub_(1.0)
        sy = ratio.mul_(covered).mul_(from_lid_top).add_(qy)
        grid = torch.empty((*qx.shape, 2), device=self.device)
        self._put(grid, qx, 0, 0.0)
        self._put(grid, sy, 1, 0.0)
        self._sample_into(out[:, ys, xs], grid)


class PortraitRenderer(contract.FrameRenderer):
    """A reference portrait lip-synced to the audio, with idle life."""

    name = "portrait"

    def __init__(self, config: contract.RenderConfig) -> None:
        super().__init__(config)
        self.device = gpu.resolve_device(config.device)
        image, layout = faces.load(config.image)
        self.frame, self.layout = faces.fit(image, layout, config.width, config.height)
        self._rig = _Rig(self.frame, self.layout, self.device)
        self._mouth = features.MouthTracker(config.sample_rate, config.fps)
        self._idle = idle.IdleMotion(config.fps, config.seed)
        chunk = CUDA_CHUNK if self.device.type == "cuda" else CPU_CHUNK
        self._downloader = gpu.Downloader(self.device, (self._rig.h, self._rig.w, 3), chunk)

    def render(self, audio: npt.NDArray[np.float32]) -> npt.NDArray[np.uint8]:
        audio = np.asarray(audio, dtype=np.float32)
        if audio.ndim != 2:
            raise ValueError(f"audio must be [frames, samples], got shape {audio.shape}")
        n = audio.shape[0]
        shapes = self._mouth(audio)
        poses = self._idle.step(n, shapes.energy)
        face_h = self._rig.face_h
        qx, qy = self._rig.head_offsets(poses.head_x * face_h, poses.head_y * face_h, poses.roll)
        mouth = np.stack([shapes.open, shapes.wide, shapes.round], axis=1)
        frames = np.empty((n, self.config.height, self.config.width, 3), np.uint8)
        frames[:] = self.frame
        rx0, ry0, rx1, ry1 = self._rig.box
        target = torch.from_numpy(frames)[:, ry0:ry1, rx0:rx1]

        def draw(a: int, b: int) -> torch.Tensor:
            return self._rig.draw(qx[a:b], qy[a:b], mouth[a:b], poses.blink[a:b])

        def paste(a: int, b: int, roi: torch.Tensor) -> None:
            target[a:b].copy_(roi)

        with torch.inference_mode():
            self._downloader.run(n, draw, paste)
        return frames

    def reset(self) -> None:
        self._mouth.reset()

    @property
    def vram_used_mib(self) -> int | None:
        return gpu.vram_mib(self.device)

    def close(self) -> None:
        self._downloader.close()


renderers.register("portrait", PortraitRenderer)
