"""The default renderer: a portrait whose mouth follows the audio and which blinks and breathes.

Per batch of frames:

1. `features.MouthTracker` turns each audio window into a smoothed mouth shape (open, wide,
   round) and a slow speech envelope; `idle.IdleMotion` adds blinks and head motion.
2. `_Rig.draw` builds one sampling grid per frame for the face's region of interest (ROI) only —
   the rest of the frame never changes — as the composition of three inverse warps, each a
   closed-form function of pixel position and a few per-frame numbers:
   - head: a small translation and roll of the face, faded to zero at the ROI's border so the
     region blends into the untouched frame;
   - mouth: the lips part along the lip line (lens-shaped: wide in the middle, closed at the
     corners), the lower lip and chin drop with the jaw, the upper lip rises a little, and the
     lips spread (wide) or narrow (round). The warp is discontinuous at the lip line: pixels
     that fall between the parted lips get no image content; they are painted as the inside of
     a mouth (dark cavity, upper teeth, tongue) with a one-pixel anti-aliased edge;
   - eyes: the skin between brow and eye slides down over the eye (the upper lid, lashes
     included, moves down with it) and slides back up.
   One `grid_sample` per frame then samples the ROI of the reference image.
3. Only the ROI is converted to uint8 and pasted into copies of the cached frame.

The grid lives in grid_sample's normalised coordinates, so the head warp over the whole ROI is
two fused multiply-adds per frame; only the small mouth and eye regions go to frame pixels and
back. Every displacement grows by less than a pixel per pixel, so the warp never folds over
itself (which would show the lower lip twice).

The same torch code runs on CPU and CUDA; on CUDA `gpu.Downloader` overlaps the device→host
copy of one chunk with rendering the next. With a zero mouth shape and no blink the grid is the
head warp alone, so a silent avatar's mouth is exactly the reference image's, while its head
and lids keep moving: the picture never freezes. The image is stored with +0.5 so that the
float → uint8 cast (a truncation) rounds.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F

from avatar_worker import renderers
from avatar_worker.renderers import base, faces, features, gpu, idle

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

CPU_CHUNK = 8  # frames rendered at once: amortises torch's per-op cost, stays in cache
CUDA_CHUNK = 32  # several chunks per call, so copies overlap with rendering

_PARAMS = 7  # open, wide, round, blink, head x (px), head y (px), roll (rad)


def _smoothstep(x: torch.Tensor) -> torch.Tensor:
    x = x.clamp(0.0, 1.0)
    return x * x * (3.0 - 2.0 * x)


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
    box: faces.Box  # the eye opening, frame px
    lid_top: float  # frame y above which nothing moves in a blink
    region: _Slice  # where the warp is computed, ROI indices


class _Rig:
    """Precomputed geometry of one portrait in one frame size; draws batches of ROIs."""

    def __init__(
        self, frame: npt.NDArray[np.uint8], layout: faces.FaceLayout, device: torch.device
    ) -> None:
        height, width = frame.shape[:2]
        face, mouth = layout.face, layout.mouth
        self.face_h = face.h
        # The ROI: the face, plus room for the head to move and the jaw to drop. The lower
        # lip's lens shape widens into the chin's drop over the whole lip-to-chin distance, and
        # the drop fades out below the chin over at least twice its size: both keep the warp's
        # slope under one.
        (_, left_y), (cx, cy), (_, right_y) = layout.lip_line
        self.jaw = JAW_DROP * mouth.w
        self.chin = max(layout.chin, mouth.y1 + 1.0)
        self.lip_to_chin = max(2.0, self.chin - cy, 1.6 * self.jaw)
        self.neck = max(2.0 * self.jaw, 0.5 * self.lip_to_chin)
        margin = HEAD_ROOM * face.h + 2.0
        # The head's motion fades out over the ROI's margins: 8 % of the face's width at the
        # sides, the forehead's top tenth above (a few pixels of motion over 15–25 pixels).
        rx0 = max(0, math.floor(face.x0 - 0.08 * face.w))
        rx1 = min(width, math.ceil(face.x1 + 0.08 * face.w))
        ry0 = max(0, math.floor(face.y0))
        ry1 = min(height, math.ceil(self.chin + self.neck + margin + 1.0))
        rx1, ry1 = max(rx1, rx0 + 2), max(ry1, ry0 + 2)
        self.box = (rx0, ry0, rx1, ry1)
        h, w = ry1 - ry0, rx1 - rx0
        self.h, self.w = h, w

        roi = torch.from_numpy(np.ascontiguousarray(frame[ry0:ry1, rx0:rx1])).to(device)
        self.src = (roi.to(torch.float32).permute(2, 0, 1).unsqueeze(0) + 0.5).contiguous()

        # grid_sample's normalised coordinates (align_corners=False): (2·(x − x0) + 1)/w − 1.
        self.scale = (2.0 / w, 2.0 / h)
        self.offset = ((1.0 - 2.0 * rx0) / w - 1.0, (1.0 - 2.0 * ry0) / h - 1.0)
        scale = torch.tensor(self.scale, dtype=torch.float32, device=device)
        ys = torch.arange(ry0, ry1, dtype=torch.float32, device=device)
        xs = torch.arange(rx0, rx1, dtype=torch.float32, device=device)
        py, px = torch.meshgrid(ys, xs, indexing="ij")
        offset = torch.tensor(self.offset, dtype=torch.float32, device=device)
        identity = torch.stack([px, py], dim=-1) * scale + offset  # [h, w, 2]

        # Head motion: full on the face, fading to nothing at the ROI's border.
        def fade(
            v: torch.Tensor, lo: float, inner_lo: float, inner_hi: float, hi: float
        ) -> torch.Tensor:
            up = _smoothstep((v - lo) / max(inner_lo - lo, 1.0))
            return up * (1.0 - _smoothstep((v - inner_hi) / max(hi - inner_hi, 1.0)))

        wx = fade(xs, rx0 - 0.5, face.x0, face.x1, rx1 - 0.5)
        top = min(face.y0 + 0.1 * face.h, min(e.y0 for e in layout.eyes) - 0.5 * face.h * HEAD_ROOM)
        wy = fade(ys, ry0 - 0.5, top, layout.chin, ry1 - 0.5)
        weight = (wy[:, None] * wx[None, :])[..., None]
        # Inverse warp: an output pixel shows what was `shift` (and `roll`) behind it. The
        # grid of a frame is identity + x·bases[0] + y·bases[1] + roll·bases[2], one matrix
        # product for a whole batch (several times faster on CPU than broadcast multiply-adds).
        pivot_x, pivot_y = face.cx, layout.chin + 0.1 * face.h  # the neck
        perp = torch.stack([-(py - pivot_y), px - pivot_x], dim=-1)
        zero = torch.zeros_like(weight)
        bases = [
            torch.cat([-weight * self.scale[0], zero], dim=-1),  # × head x (px)
            torch.cat([zero, -weight * self.scale[1]], dim=-1),  # × head y (px)
            -weight * perp * scale,  # × roll (radians)
        ]
        self.identity = identity.reshape(1, -1)
        self.head_bases = torch.stack([b.reshape(-1) for b in bases])  # [3, h·w·2]

        # Mouth.
        self.mouth_cx = cx
        self.mouth_hw = max(1.0, mouth.w / 2)
        self.lip_y = cy
        self.lip_bend = (left_y + right_y) / 2 - cy  # corners relative to centre (<0: a smile)
        self.upper = UPPER_LIFT * self.jaw
        self.teeth = TEETH * mouth.w
        self.lower_lip = max(2.0, mouth.y1 - cy)
        self.upper_room = max(2.0, cy - max(layout.nose, mouth.y0 - 0.6 * mouth.h))
        self.mouth_region = _Slice.clipped(
            cx - BROAD * self.mouth_hw - margin - rx0,
            cy - self.upper_room - margin - ry0,
            cx + BROAD * self.mouth_hw + margin - rx0,
            self.chin + self.neck + margin - ry0,
            w,
            h,
        )
        # The opening is much smaller than the region that moves: paint only there.
        opening = _Slice.clipped(
            cx - self.mouth_hw - margin - 1.0 - rx0,
            cy + min(0.0, self.lip_bend) - self.upper - margin - 2.0 - ry0,
            cx + self.mouth_hw + margin + 1.0 - rx0,
            cy + max(0.0, self.lip_bend) + self.jaw + margin + 2.0 - ry0,
            w,
            h,
        )
        self.opening = opening.within(self.mouth_region)  # in the mouth region's indices
        self.opening_roi = _Slice(  # in the ROI's
            self.opening.y0 + self.mouth_region.y0,
            self.opening.y1 + self.mouth_region.y0,
            self.opening.x0 + self.mouth_region.x0,
            self.opening.x1 + self.mouth_region.x0,
        )

        def colour(rgb: tuple[float, float, float]) -> torch.Tensor:
            return torch.tensor(rgb, dtype=torch.float32, device=device).view(1, 3, 1, 1) + 0.5

        self.inner_dark = colour(INNER_DARK)
        self.inner_edge = colour(INNER_EDGE)
        self.tongue = colour(TONGUE)
        self.teeth_colour = colour(TEETH_COLOUR)

        # Eyes; their regions stop where the mouth's begins.
        self.eyes: list[_Eye] = []
        for eye in layout.eyes:
            lid_top = eye.y0 - LID_SKIN * eye.h
            bottom = min(eye.y1 + margin + 1.0, ry0 + self.mouth_region.y0)
            region = _Slice.clipped(
                eye.x0 - 0.2 * eye.w - margin - rx0,
                lid_top - margin - ry0,
                eye.x1 + 0.2 * eye.w + margin - rx0,
                bottom - ry0,
                w,
                h,
            )
            self.eyes.append(_Eye(eye, lid_top, region))

    def draw(self, params: torch.Tensor) -> torch.Tensor:
        """Float [n, 3, h, w] ROIs (pixel values + 0.5) for per-frame params [n, 7]:
        open, wide, round, blink, head x (px), head y (px), roll (radians)."""
        n = params.shape[0]
        p = params.view(n, _PARAMS, 1, 1)
        grid = torch.addmm(self.identity, params[:, 4:7], self.head_bases).view(
            n, self.h, self.w, 2
        )
        cavity = self._mouth(grid, p[:, 0], p[:, 1], p[:, 2])
        for eye in self.eyes:
            self._eye(grid, eye, p[:, 3])
        out = F.grid_sample(
            self.src.expand(n, -1, -1, -1),
            grid,
            mode="bilinear",
            padding_mode="border",
            align_corners=False,
        )
        self._paint_cavity(out, cavity, p[:, 1].unsqueeze(1))
        return out

    def _to_pixels(self, region: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return (
            (region[..., 0] - self.offset[0]) / self.scale[0],
            (region[..., 1] - self.offset[1]) / self.scale[1],
        )

    def _mouth(
        self, grid: torch.Tensor, open_: torch.Tensor, wide: torch.Tensor, round_: torch.Tensor
    ) -> _Cavity:
        """Warp the mouth's region of `grid` in place; say where the opening is."""
        ys, xs = self.mouth_region.at
        region = grid[:, ys, xs]
        qx, qy = self._to_pixels(region)
        dx = qx - self.mouth_cx
        dy = qy - self.lip_y
        envelope = torch.exp(
            -(dx / (1.5 * self.mouth_hw)).square() - (dy / (1.2 * self.lower_lip + 2.0)).square()
        )
        squeeze = WIDE_STRETCH * wide - ROUND_SQUEEZE * round_
        sx = qx - dx * squeeze * envelope
        u2 = ((sx - self.mouth_cx) / self.mouth_hw).square().clamp(max=BROAD * BROAD)
        lip = self.lip_y + self.lip_bend * u2
        # The opening's outline: a lens, √(1 − u²), fuller (rounder corners) for rounded lips,
        # up to (1 − u²)^0.375. Square roots: a fractional pow costs ten times more on a CPU.
        root = (1.0 - u2).clamp_min(0.0).sqrt()
        lens = root + (root.sqrt() - root) * (0.5 * round_)
        broad = (1.0 - u2 / (BROAD * BROAD)).square()
        below = qy >= lip
        # Lower branch: the lower lip follows the lens; further down the chin drops whole.
        blend = _smoothstep((qy - lip) / self.lip_to_chin)
        fall = 1.0 - _smoothstep((qy - self.chin) / self.neck)
        drop = open_ * self.jaw * (lens + (broad - lens) * blend) * fall
        # Upper branch: the upper lip rises a little, fading out towards the nose.
        rise = open_ * self.upper * lens * (1.0 - _smoothstep((lip - qy) / self.upper_room))
        sy = torch.where(below, qy - drop, qy + rise)
        # Pixels whose source crossed the lip line lie between the lips: the mouth's inside.
        oy, ox = self.opening.at
        lip_o, sy_o, lens_o = lip[:, oy, ox], sy[:, oy, ox], lens[:, oy, ox]
        cavity = _Cavity(
            alpha=torch.where(below[:, oy, ox], lip_o - sy_o, sy_o - lip_o).clamp(0.0, 1.0),
            from_top=qy[:, oy, ox] - (lip_o - open_ * self.upper * lens_o),
            gap=open_ * (self.upper + self.jaw) * lens_o,
            lens=lens_o,
            u2=u2[:, oy, ox],
        )
        region[..., 0] = sx * self.scale[0] + self.offset[0]
        region[..., 1] = sy * self.scale[1] + self.offset[1]
        return cavity

    def _paint_cavity(self, out: torch.Tensor, cavity: _Cavity, wide: torch.Tensor) -> None:
        """Paint the inside of the mouth between the parted lips of `out` (in place)."""
        ys, xs = self.opening_roi.at
        region = out[:, :, ys, xs]
        a, from_top, gap, lens, u2 = (t.unsqueeze(1) for t in cavity)
        from_bottom = gap - from_top
        # Dark inside, redder for a couple of pixels just inside the lips.
        inside = (torch.minimum(from_top, from_bottom) / 2.5).clamp(0.0, 1.0)
        colour = self.inner_edge + (self.inner_dark - self.inner_edge) * inside
        # The tongue: a low, dim hump behind the lower lip, seen when the mouth is well open.
        tongue = (0.25 * gap * lens - 2.0 - from_bottom).clamp(0.0, 1.0) * 0.55
        colour = colour + (self.tongue - colour) * tongue
        # The upper teeth, just under the upper lip, not reaching the corners; shaded under
        # the lip and towards the sides.
        across = (1.0 - u2 / 0.55).clamp_min(0.0)
        # Spread lips ("ee", "s") show more of the teeth.
        teeth_h = torch.minimum(self.teeth * (1.0 + 0.6 * wide) * across.sqrt(), 0.6 * gap)
        teeth = (teeth_h - from_top).clamp(0.0, 1.0)
        depth = (from_top / teeth_h.clamp_min(1.0)).clamp(0.0, 1.0)
        shade = (0.62 + 0.38 * across) * (0.8 + 0.2 * depth)
        colour = colour + (self.teeth_colour * shade - colour) * teeth
        region.add_(a * (colour - region))

    def _eye(self, grid: torch.Tensor, eye: _Eye, blink: torch.Tensor) -> None:
        """Warp one eye's region of `grid` in place: the upper lid comes down by `blink`."""
        ys, xs = eye.region.at
        region = grid[:, ys, xs]
        qx, qy = self._to_pixels(region)
        box = eye.box
        u = (qx - box.cx) / max(1.0, box.w / 2)
        arc = (1.0 - u.square()).clamp_min(0.0).sqrt()
        top = box.cy - (box.cy - box.y0) * arc
        closed = box.cy + 0.92 * (box.y1 - box.cy) * arc  # shut: the lid meets the lower lid
        inside_x = 1.0 - _smoothstep((u.abs() - 1.0) / 0.35)
        lid = top + blink * inside_x * (closed - top)
        # The skin between lid_top and the eye's top edge stretches down to the lid's new edge.
        covered = (qy >= eye.lid_top) & (qy < lid)
        ratio = (top - eye.lid_top) / (lid - eye.lid_top).clamp_min(1e-3)
        sy = torch.where(covered, eye.lid_top + (qy - eye.lid_top) * ratio, qy)
        region[..., 1] = sy * self.scale[1] + self.offset[1]


class PortraitRenderer(base.FrameRenderer):
    """A reference portrait lip-synced to the audio, with idle life."""

    name = "portrait"

    def __init__(self, config: base.RenderConfig) -> None:
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
        columns = [
            shapes.open,
            shapes.wide,
            shapes.round,
            poses.blink,
            poses.head_x * face_h,
            poses.head_y * face_h,
            poses.roll,
        ]
        params = torch.from_numpy(np.stack(columns, axis=1).astype(np.float32)).to(self.device)
        frames = np.empty((n, self.config.height, self.config.width, 3), np.uint8)
        frames[:] = self.frame
        rx0, ry0, rx1, ry1 = self._rig.box
        target = torch.from_numpy(frames)[:, ry0:ry1, rx0:rx1]

        def draw(a: int, b: int) -> torch.Tensor:
            # The cast truncates; the image carries +0.5, so it rounds.
            roi = self._rig.draw(params[a:b]).to(torch.uint8).permute(0, 2, 3, 1)
            return roi if self.device.type == "cpu" else roi.contiguous()

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
