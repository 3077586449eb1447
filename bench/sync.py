"""A/V sync, interrupts and acks as a viewer sees them, printed as one JSON object.

    python bench/sync.py [--seed 1] [--size 512]

Two live sessions run in real time through the local room (`avatar_worker.transports.localroom`),
one with a stock sender (raw PCM, as videosdk-agents' `AvatarAudioOut`), one with the project's
framed sender. Unreliable messages are jittered by up to 4 ms, so they arrive reordered. Each
session plays eight TTS turns; two are interrupted mid-way, one of them followed by the next
turn 50 ms later. The renderer draws brightness = loudness, so the viewer can tell speaking
frames from idle ones by their luma; each turn has its own level, so the viewer can tell turns
apart in the audio it received. Everything is measured from what the viewer received and when
(arrival times on the room's clock), against what the agent sent and when:

* `av_offset_ms` — for each turn's onset: when the viewer got the first speaking frame, minus
  when it got the audio of that frame's first sample (mean; negative: video early).
* `drift_ms_per_hour` — the slope of the A/V arrival offset (video frame vs the audio of its
  first sample) over every frame of a 5-minute session through the same room on a virtual
  clock whose every sleep is up to 1 ms late (scheduling noise); a real-time run of seconds
  cannot resolve 1 ms/h against its own noise.
* `interrupt_to_silence_ms` / `interrupt_to_idle_video_ms` — from the agent sending INTERRUPT to
  the last interrupted sample the viewer plays / the first idle frame it receives (max).
* `first_frame_ms` — from the agent's first chunk of a turn to its first speaking frame at the
  viewer (max).
* `position_error_ms` — |`playback_position` acked − audio of that turn the viewer received|
  (max).
* `dropped_audio_ms` — audio the agent sent in turns that were not interrupted and the viewer
  never received.
* `stream_ended_per_segment` — acks the agent received per turn sent.

Bounded: ~25 s of real-time sessions and ~10 s of virtual time on a 2-core machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from avatar_sdk import protocol
from avatar_worker import clock as clocks
from avatar_worker import virtualtime
from avatar_worker.pipeline import AvatarPipeline, PipelineConfig
from avatar_worker.renderers.contract import FrameRenderer, RenderConfig
from avatar_worker.session import run_session
from avatar_worker.transports.localroom import LinkConditions, LocalRoom, LocalTransport
from avatar_worker.transports.viewer import LocalViewer

RATE = 24_000
FPS = 30
SPF = RATE // FPS
AGENT = "agent"
BRIGHT = 20.0  # luma above video black (16) that counts as speaking
TURN_LEVEL = 2_000  # turn i plays around TURN_LEVEL * (i + 1): never 0, and tells turns apart


class LoudnessRenderer(FrameRenderer):
    """Brightness = loudness: speaking frames are bright, idle frames are black."""

    name = "bench-loudness"

    def render(self, audio: npt.NDArray[np.float32]) -> npt.NDArray[np.uint8]:
        level = np.abs(audio).max(axis=1)
        out = np.empty((len(audio), self.config.height, self.config.width, 3), np.uint8)
        out[:] = np.clip(level * 255 * 2, 0, 255).astype(np.uint8)[:, None, None, None]
        return out


def turn_pcm(index: int, seconds: float) -> bytes:
    n = int(seconds * RATE)
    t = np.arange(n) / RATE
    wave = TURN_LEVEL * (index + 1) + 300 * np.sin(2 * np.pi * 180 * t)
    return wave.astype("<i2").tobytes()


def turn_of(value: int) -> int:
    return round(value / TURN_LEVEL) - 1


@dataclass
class Turn:
    index: int
    pcm: bytes
    sent_at: float = 0.0
    interrupt_at: float | None = None


@dataclass
class SessionResult:
    turns: list[Turn]
    acks: list[protocol.StreamEnded]
    audio: list[tuple[int, float, npt.NDArray[np.int16]]]
    video: list[tuple[int, float, float]]
    extra: dict[str, Any] = field(default_factory=dict)


class Sender:
    """The agent's side: stock raw PCM (AvatarAudioOut) or the framed dialect."""

    def __init__(self, participant: Any, framed: bool) -> None:
        self._participant = participant
        self._framer = protocol.SegmentFramer(RATE) if framed else None

    async def audio(self, pcm: bytes) -> None:
        if self._framer is not None:
            chunks = []
            for i in range(0, len(pcm), 1_920):  # TTS frames of 40 ms
                chunks += self._framer.audio(pcm[i : i + 1_920])
        else:
            chunks = protocol.pcm_chunks(pcm)
        for chunk in chunks:
            await self._participant.send(chunk, protocol.UNRELIABLE)

    async def segment_end(self) -> None:
        payload = self._framer.segment_end() if self._framer else protocol.encode_segment_end()
        await self._participant.send(payload, protocol.RELIABLE)

    async def interrupt(self) -> None:
        payload = self._framer.interrupt() if self._framer else protocol.encode_interrupt()
        await self._participant.send(payload, protocol.RELIABLE)


async def live_session(framed: bool, seed: int, size: int) -> SessionResult:
    loop = asyncio.get_running_loop()
    rng = random.Random(seed)
    room = LocalRoom(conditions=LinkConditions(jitter=0.004, seed=seed))
    config = PipelineConfig(width=size, height=size, fps=FPS, sample_rate=RATE)
    pipeline = AvatarPipeline(
        LoudnessRenderer(RenderConfig(size, size, FPS, RATE)),
        config=config,
        agent_participant_id=AGENT,
    )
    transport = LocalTransport(room, "avatar", lambda: AGENT)
    session = asyncio.create_task(run_session(pipeline, transport, participant_id="avatar"))
    agent = room.join(AGENT)
    viewer = LocalViewer(room.join("viewer"), source="avatar", width=size, height=size)
    acks: list[protocol.StreamEnded] = []

    def on_ack(message: dict[str, Any]) -> None:
        decoded = protocol.decode_payload(message["payload"])
        if isinstance(decoded, protocol.StreamEnded):
            acks.append(decoded)

    agent.add_data_listener(on_ack)
    sender = Sender(agent, framed)
    await asyncio.sleep(0.5)
    turns: list[Turn] = []
    for index in range(8):
        seconds = rng.uniform(0.8, 1.4)
        turn = Turn(index, turn_pcm(index, seconds))
        turns.append(turn)
        turn.sent_at = loop.time()
        await sender.audio(turn.pcm)
        if index in (2, 5):  # interrupted at 40 %
            await asyncio.sleep(seconds * 0.4)
            turn.interrupt_at = loop.time()
            await sender.interrupt()
            if index == 2:
                await asyncio.sleep(0.05)  # the next turn, 50 ms later
                continue
        else:
            await sender.segment_end()
            await asyncio.sleep(seconds)
        await asyncio.sleep(rng.uniform(0.4, 0.7))
    await asyncio.sleep(0.8)
    await agent.leave()
    await session
    return SessionResult(turns, acks, viewer.log.audio, viewer.log.video)


def analyse(result: SessionResult) -> dict[str, Any]:
    audio = sorted(result.audio, key=lambda a: a[0])
    # video pts are in the 90 kHz clock, floored from the sample counter: back to samples
    video = sorted((-(-v[0] * RATE // 90_000), v[1], v[2]) for v in result.video)
    pts = np.array([a[0] for a in audio])
    arrivals = np.array([a[1] for a in audio])
    pcm = np.concatenate([a[2].reshape(-1) for a in audio])
    # the time the viewer received each sample: its frame's arrival plus its place in it
    sample_time = np.repeat(arrivals, [len(a[2]) for a in audio]) + (
        np.concatenate([np.arange(len(a[2])) for a in audio]) / RATE
    )
    base = pts[0]

    def audio_time(sample: int) -> float:
        return float(sample_time[sample - base])

    turns_seen = np.where(pcm != 0, np.vectorize(turn_of)(pcm), -1)
    offsets, first_frames, positions, silences, idles = [], [], [], [], []
    dropped = 0
    for turn in result.turns:
        where = np.flatnonzero(turns_seen == turn.index)
        if not len(where):
            raise SystemExit(f"turn {turn.index} never reached the viewer")
        onset = int(where[0]) + base
        frame_start = onset // SPF * SPF
        bright = next(v for v in video if v[0] >= frame_start - SPF and v[2] > BRIGHT)
        video_at = bright[1]
        content = (bright[0] - frame_start) / RATE  # 0 when the right frame lights up
        offsets.append(video_at - audio_time(bright[0]) + content)
        first_frames.append(video_at - turn.sent_at)
        received = len(where) / RATE
        ack = result.acks[turn.index]
        positions.append(abs(ack.playback_position - received))
        if turn.interrupt_at is None:
            dropped += len(turn.pcm) // 2 - len(where)
        else:
            last_heard = audio_time(int(where[-1]) + base) + 1 / RATE
            silences.append(max(0.0, last_heard - turn.interrupt_at))
            idle = next(v for v in video if v[1] > turn.interrupt_at and v[2] <= BRIGHT)
            idles.append(idle[1] - turn.interrupt_at)
    return {
        "offsets": offsets,
        "first_frame": max(first_frames),
        "position_error": max(positions),
        "silence": max(silences),
        "idle": max(idles),
        "dropped": dropped,
        "acks_per_turn": len(result.acks) / len(result.turns),
    }


# ---------------------------------------------------------------------------------------------
# drift: a long session on a virtual clock, measured at the viewer


class LateClock(clocks.LoopClock):
    def __init__(self, jitter: float, seed: int) -> None:
        self._jitter = jitter
        self._random = random.Random(seed)

    async def sleep_until(self, deadline: float) -> None:
        delay = max(0.0, deadline - self.now())
        await asyncio.sleep(delay + self._random.uniform(0.0, self._jitter))


async def long_session(minutes: float, seed: int) -> float:
    room = LocalRoom(conditions=LinkConditions(jitter=0.004, seed=seed))
    config = PipelineConfig(width=32, height=32, fps=FPS, sample_rate=RATE)
    pipeline = AvatarPipeline(
        LoudnessRenderer(RenderConfig(32, 32, FPS, RATE)),
        config=config,
        agent_participant_id=AGENT,
        clock=LateClock(0.001, seed),
    )
    transport = LocalTransport(room, "avatar", lambda: AGENT)
    session = asyncio.create_task(run_session(pipeline, transport, participant_id="avatar"))
    agent = room.join(AGENT)
    viewer = LocalViewer(room.join("viewer"), source="avatar", width=32, height=32)
    sender = Sender(agent, framed=True)
    turns = int(minutes * 60 / 15)
    for index in range(turns):
        await sender.audio(turn_pcm(index % 8, 1.0))
        await sender.segment_end()
        await asyncio.sleep(15.0)
    await agent.leave()
    await session
    audio = sorted(viewer.log.audio, key=lambda a: a[0])
    audio_pts = np.array([a[0] for a in audio])
    audio_at = np.array([a[1] for a in audio])
    video = sorted(viewer.log.video, key=lambda v: v[0])
    video_pts = np.array([-(-v[0] * RATE // 90_000) for v in video])
    video_at = np.array([v[1] for v in video])
    # audio arrival time of each video frame's first sample (20 ms frames: interpolate inside)
    frame_of = np.searchsorted(audio_pts, video_pts, side="right") - 1
    keep = frame_of >= 0
    audio_of_video = audio_at[frame_of[keep]] + (video_pts[keep] - audio_pts[frame_of[keep]]) / RATE
    offset = video_at[keep] - audio_of_video
    slope = float(np.polyfit(video_at[keep] - video_at[0], offset, 1)[0])
    return slope * 3600 * 1000  # ms per hour


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--size", type=int, default=512, help="video width and height")
    parser.add_argument("--drift-minutes", type=float, default=5.0)
    args = parser.parse_args()

    results = [
        analyse(asyncio.run(live_session(framed, args.seed, args.size))) for framed in (False, True)
    ]
    drift = virtualtime.run(long_session(args.drift_minutes, args.seed))
    offsets = [o for r in results for o in r["offsets"]]
    print(
        json.dumps(
            {
                "av_offset_ms": round(float(np.mean(offsets)) * 1000, 2),
                "drift_ms_per_hour": round(drift, 3),
                "interrupt_to_silence_ms": round(max(r["silence"] for r in results) * 1000, 1),
                "interrupt_to_idle_video_ms": round(max(r["idle"] for r in results) * 1000, 1),
                "first_frame_ms": round(max(r["first_frame"] for r in results) * 1000, 1),
                "position_error_ms": round(max(r["position_error"] for r in results) * 1000, 2),
                "dropped_audio_ms": round(sum(r["dropped"] for r in results) / RATE * 1000, 1),
                "stream_ended_per_segment": min(r["acks_per_turn"] for r in results),
            }
        )
    )


if __name__ == "__main__":
    main()
