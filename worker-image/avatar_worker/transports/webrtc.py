"""Real WebRTC to a browser on this machine: aiortc peers fed by the local room's frames.

`ViewerPeer` is one browser's `RTCPeerConnection` (server side): the browser offers
(recvonly audio and video), the peer answers with two `ForwardedTrack`s, and the local room's
frames of the avatar participant are pushed into them as they arrive. aiortc's senders pull the
tracks with `recv()`, encode (Opus, VP8) off the event loop and pace nothing themselves, so the
avatar's own pacing is what the browser sees.

Frames are shared by every listener of the room, so a track never changes one. Audio is copied
into a frame of its own with a continuous sample count (a dropped frame leaves no gap in the
RTP clock), as 48 kHz stereo: aiortc's Opus encoder resamples anything else with one frame
(20 ms) of delay, so rates that divide 48 kHz are interpolated here, without look-ahead. Video
keeps the avatar's 90 kHz timestamps, shifted so they never go backwards (a new worker in the
same room starts its clock at 0). Queues are bounded: when the encoder
falls behind, the oldest frames go — stale video is worth nothing, and late audio only grows
the browser's delay.

ICE: no STUN or TURN (`iceServers` empty); the browser is on this machine. aioice leaves
127.0.0.1 out of the host candidates it gathers (`aioice.ice.get_host_addresses`), which would
leave a machine without another interface, or a browser that gathers only loopback, with no
pair at all; `allow_loopback_ice()` wraps that lookup once to put 127.0.0.1 first.
"""

from __future__ import annotations

import asyncio
import fractions
import logging
from collections import deque

import av
import numpy as np
import numpy.typing as npt
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from avatar_worker import media

logger = logging.getLogger(__name__)

AUDIO_QUEUE_FRAMES = 25  # 0.5 s of 20 ms frames
VIDEO_QUEUE_FRAMES = 3  # ~0.1 s at 30 fps
REBASE_GAP_S = 1.0  # a timestamp jump this large (or backwards) is a new sender's clock
LOOPBACK = "127.0.0.1"
OPUS_RATE = 48_000  # Hz: what aiortc's Opus encoder takes without a resampler of its own

_loopback_allowed = False


def allow_loopback_ice() -> None:
    """Make aioice gather a host candidate on 127.0.0.1 too (idempotent, process-wide)."""
    global _loopback_allowed
    if _loopback_allowed:
        return
    from aioice import ice

    lookup = ice.get_host_addresses

    def with_loopback(use_ipv4: bool, use_ipv6: bool) -> list[str]:
        addresses: list[str] = lookup(use_ipv4, use_ipv6)
        return [LOOPBACK, *addresses] if use_ipv4 and LOOPBACK not in addresses else addresses

    ice.get_host_addresses = with_loopback
    _loopback_allowed = True


class ForwardedTrack(MediaStreamTrack):
    """An aiortc track whose frames are pushed in (`push`) and pulled by the RTP sender."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind
        limit = AUDIO_QUEUE_FRAMES if kind == "audio" else VIDEO_QUEUE_FRAMES
        self._frames: deque[av.AudioFrame | av.VideoFrame] = deque(maxlen=limit)
        self._ready = asyncio.Event()
        self._samples = 0  # audio: the next frame's pts
        self._tail: npt.NDArray[np.float32] | None = None  # audio: the last sample sent
        self._offset = 0  # video: added to the avatar's pts
        self._last_pts: int | None = None
        self.pushed = 0
        self.dropped = 0

    def push(self, frame: av.AudioFrame | av.VideoFrame) -> None:
        if self.readyState != "live":
            return
        out = self._audio(frame) if isinstance(frame, av.AudioFrame) else self._video(frame)
        if len(self._frames) == self._frames.maxlen:
            self.dropped += 1
        self._frames.append(out)
        self.pushed += 1
        self._ready.set()

    async def recv(self) -> av.AudioFrame | av.VideoFrame:
        while not self._frames:
            if self.readyState != "live":
                raise MediaStreamError
            self._ready.clear()
            await self._ready.wait()
        if self.readyState != "live":
            raise MediaStreamError
        return self._frames.popleft()

    def stop(self) -> None:
        super().stop()
        self._ready.set()  # wake a waiting recv() so it raises

    def _audio(self, frame: av.AudioFrame) -> av.AudioFrame:
        samples = media.frame_to_samples(frame, 2)
        rate = int(frame.sample_rate)
        if OPUS_RATE % rate == 0:
            samples, rate = self._upsample(samples, OPUS_RATE // rate), OPUS_RATE
        out = media.samples_to_frame(samples, rate)
        out.pts = self._samples
        out.time_base = fractions.Fraction(1, rate)
        self._samples += len(samples)
        return out

    def _upsample(self, samples: media.Samples, factor: int) -> media.Samples:
        """Linear interpolation from the previous frame's last sample: no look-ahead."""
        if factor == 1:
            return np.array(samples)
        x = samples.astype(np.float32)
        previous = self._tail if self._tail is not None else x[:1]
        self._tail = x[-1:]
        steps = np.arange(1, factor + 1, dtype=np.float32)[None, :, None] / factor
        start = np.concatenate([previous, x[:-1]])[:, None, :]
        out = start + (x[:, None, :] - start) * steps  # [n, factor, channels]
        return np.asarray(np.round(out).reshape(-1, x.shape[1]), np.int16)

    def _video(self, frame: av.VideoFrame) -> av.VideoFrame:
        tb = frame.time_base or media.VIDEO_TIME_BASE
        pts = round((frame.pts or 0) * tb * media.VIDEO_CLOCK_RATE)
        shifted = pts + self._offset
        last = self._last_pts
        if last is not None and not 0 < shifted - last <= REBASE_GAP_S * media.VIDEO_CLOCK_RATE:
            self._offset = last + media.VIDEO_CLOCK_RATE // 30 - pts
            shifted = pts + self._offset
        self._last_pts = shifted
        out = media.i420_to_frame(np.asarray(frame.to_ndarray(format="yuv420p"), np.uint8))
        out.pts = shifted
        out.time_base = media.VIDEO_TIME_BASE
        return out


class ViewerPeer:
    """One browser's peer connection: answers its offer, forwards the avatar's frames."""

    def __init__(self, peer_id: str) -> None:
        allow_loopback_ice()
        self.id = peer_id
        self.audio = ForwardedTrack("audio")
        self.video = ForwardedTrack("video")
        self._pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.closed = asyncio.Event()

        @self._pc.on("connectionstatechange")
        async def _on_state() -> None:
            state = self._pc.connectionState
            logger.info("viewer peer state", extra={"peer": self.id, "state": state})
            if state in ("failed", "closed"):
                await self.aclose()

    @property
    def state(self) -> str:
        return str(self._pc.connectionState)

    async def answer(self, sdp: str, kind: str = "offer") -> dict[str, str]:
        """Take the browser's offer; returns the answer (ICE candidates included)."""
        await self._pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type=kind))
        self._pc.addTrack(self.audio)
        self._pc.addTrack(self.video)
        await self._pc.setLocalDescription(await self._pc.createAnswer())
        local = self._pc.localDescription
        return {"sdp": local.sdp, "type": local.type}

    def push(self, kind: str, frame: av.AudioFrame | av.VideoFrame) -> None:
        (self.audio if kind == "audio" else self.video).push(frame)

    async def aclose(self) -> None:
        if self.closed.is_set():
            return
        self.closed.set()
        self.audio.stop()
        self.video.stop()
        await self._pc.close()
