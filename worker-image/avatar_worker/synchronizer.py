"""One media clock for audio and video: the sample counter.

The synchronizer keeps a *timeline* of units. A unit is one video frame and the audio that plays
while it is shown (800 samples at 24 kHz and 30 fps; for rates that do not divide, the frame
spans come from one integer counter, so 16 kHz at 30 fps alternates 533/533/534 and adds up
exactly). Units are laid end to end, so the timeline is a single sample count:

* audio frame m is samples [m·A, (m+1)·A) with A = 20 ms of samples, pts = m·A;
* a video frame is shown from its unit's first sample S, pts = S in the 90 kHz video clock;
* both are handed out at `t0 + pts` seconds, against one start time `t0` (aiortc's rule: never
  sleep relative to the previous frame), so no amount of scheduling noise accumulates into
  drift, however long the session.

Producers (the renderer drivers) push units ahead of time into a bounded *pending* queue; a
full queue makes them wait (back-pressure all the way back to the receiver, which holds the
backlog). A unit is *committed* to the timeline only when a track first needs it, a few
milliseconds before it plays. When nothing is pending then, the synchronizer commits an idle
unit (silence and the cached idle frame): an underrun delays speech, it never drops it.

Idle units rendered ahead (blinks between turns) are *soft*: speech replaces them, so a reply
starts at the next frame instead of queueing behind idle animation.

An interrupt removes the segment's pending units and cuts its committed ones where the audio
cursor stands: the next 20 ms audio frame is silent and the next video frame is the idle frame,
whatever was rendered. The `SegmentTracker` learns of every speech sample as its audio frame is
handed to the sender, and of each segment's end as the audio cursor passes it.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable, Collection
from dataclasses import dataclass, field

import numpy as np

from avatar_worker import clock as clocks
from avatar_worker import media, yuv
from avatar_worker.segments import Segment, SegmentTracker

logger = logging.getLogger(__name__)

DEFAULT_MAX_AHEAD_UNITS = 8  # ~267 ms at 30 fps rendered ahead at most (the jitter buffer)
IDLE_AHEAD_UNITS = 2  # idle frames rendered ahead between turns
DEFAULT_MAX_LAG = 1.0  # s: a track further behind than this skips ahead instead of bursting


@dataclass(eq=False)
class Unit:
    """One video frame and the audio that plays while it is shown."""

    audio: media.Samples  # [n, channels]
    video: media.I420 | None  # None: the idle frame
    segment: Segment | None = None  # whose speech this unit carries
    speech: int = 0  # samples of `segment` at the start of `audio`; the rest is padding
    ends: list[tuple[int, Segment]] = field(default_factory=list)  # (offset, segment) ends
    soft: bool = False  # an idle unit rendered ahead: speech may replace it
    start: int = -1  # first sample on the timeline, once committed
    seq: int = -1  # position on the timeline, once committed
    video_sent: bool = False

    @property
    def end(self) -> int:
        return self.start + len(self.audio)


@dataclass
class SyncStats:
    audio_frames: int = 0
    video_frames: int = 0
    idle_units: int = 0  # committed because nothing was pending (underruns and silence)
    speech_units: int = 0
    soft_dropped: int = 0
    interrupted_units: int = 0
    skipped_audio_samples: int = 0  # a track that fell more than max_lag behind
    skipped_video_frames: int = 0


class TrackEndedError(Exception):
    """The synchronizer was closed: its tracks have ended."""


class Synchronizer:
    """The timeline shared by the audio and video tracks; see the module docstring."""

    def __init__(
        self,
        *,
        sample_rate: int,
        channels: int,
        fps: int,
        width: int,
        height: int,
        tracker: SegmentTracker,
        clock: clocks.Clock | None = None,
        max_ahead_units: int = DEFAULT_MAX_AHEAD_UNITS,
        max_lag: float = DEFAULT_MAX_LAG,
    ) -> None:
        self.sample_rate = sample_rate
        self.channels = channels
        self.fps = fps
        self.width = width
        self.height = height
        self.tracker = tracker
        self.clock = clock if clock is not None else clocks.LoopClock()
        self.max_ahead_units = max_ahead_units
        self.audio_frame_samples = media.audio_frame_samples(sample_rate)
        self.idle_frame: media.I420 = yuv.solid_i420(width, height)
        self.stats = SyncStats()
        self._max_lag_samples = int(max_lag * sample_rate)
        self._windows = media.FrameWindows(sample_rate, fps)
        self._pending: deque[Unit] = deque()
        self._timeline: deque[Unit] = deque()
        self._floating_ends: list[Segment] = []  # ends of segments with nothing on the timeline
        self._committed_end = 0  # samples
        self._next_seq = 0
        self._audio_frame = 0  # index of the next 20 ms audio frame
        self._video_seq = 0  # seq of the next unit whose frame is sent
        self._t0: float | None = None
        self._closed = False
        self._room_ev = asyncio.Event()
        self._commit_listeners: list[Callable[[], None]] = []
        self.last_video_lateness = 0.0  # s: how late the last video frame was handed out
        self.last_audio_lateness = 0.0

    # -----------------------------------------------------------------------------------------
    # producer side

    @property
    def started(self) -> bool:
        return self._t0 is not None

    @property
    def t0(self) -> float | None:
        return self._t0

    def pending_units(self, *, soft: bool = False) -> int:
        return sum(1 for u in self._pending if u.soft == soft)

    def room(self) -> int:
        """Units that may still be pushed before the producer must wait."""
        return max(0, self.max_ahead_units - self.pending_units())

    async def wait_for_room(self, units: int = 1) -> None:
        """Until `units` more may be pushed (back-pressure)."""
        units = max(1, min(units, self.max_ahead_units))
        while self.room() < units and not self._closed:
            self._room_ev.clear()
            await self._room_ev.wait()

    def until_next_commit(self) -> float:
        """Seconds until a track next takes a unit (inf before the tracks start)."""
        if self._t0 is None:
            return float("inf")
        size = self.audio_frame_samples
        audio_needs_at = self._committed_end // size * size  # the read that runs past it
        due = self._t0 + audio_needs_at / self.sample_rate
        return due - self.clock.now()

    def wants_idle(self) -> bool:
        """Nothing but a little idle animation pending: render another idle frame."""
        return not self._closed and len(self._pending) < IDLE_AHEAD_UNITS

    def add_commit_listener(self, listener: Callable[[], None]) -> None:
        """Called whenever a pending unit is taken (room freed, idle wanted)."""
        self._commit_listeners.append(listener)

    def push(self, unit: Unit) -> None:
        """Queue a rendered unit; speech replaces idle units rendered ahead."""
        if self._closed:
            return
        if not unit.soft and self._pending and self._pending[-1].soft:
            kept = deque(u for u in self._pending if not u.soft)
            self.stats.soft_dropped += len(self._pending) - len(kept)
            self._pending = kept
        if unit.soft:
            self.idle_frame = unit.video if unit.video is not None else self.idle_frame
            if self.pending_units(soft=True) >= self.max_ahead_units:
                # A renderer yielding idle frames faster than they play: keep the newest.
                oldest = next(u for u in self._pending if u.soft)
                self._pending.remove(oldest)
                self.stats.soft_dropped += 1
        self._pending.append(unit)

    def end_segment(self, segment: Segment) -> None:
        """`segment` ended after its last unit was pushed: end it where its audio ends."""
        for queue in (self._pending, self._timeline):
            for unit in reversed(queue):
                if unit.segment is segment:
                    unit.ends.append((unit.speech, segment))
                    return
        for unit in reversed(self._pending):
            if not unit.soft:  # an empty segment: end it after what is queued before it
                unit.ends.append((len(unit.audio), segment))
                return
        self._floating_ends.append(segment)

    def interrupt(self, segments: Collection[Segment]) -> None:
        """Silence `segments` from the audio cursor on and show the idle frame at once."""
        targets = set(segments)
        if not targets:
            return
        kept: deque[Unit] = deque()
        for unit in self._pending:
            if unit.segment in targets:
                self.stats.interrupted_units += 1
                continue
            unit.ends = [(o, s) for o, s in unit.ends if s not in targets]
            kept.append(unit)
        self._pending = kept
        cursor = self._audio_frame * self.audio_frame_samples
        for unit in self._timeline:
            unit.ends = [(o, s) for o, s in unit.ends if s not in targets]
            if unit.segment not in targets:
                continue
            self.stats.interrupted_units += 1
            played = min(len(unit.audio), max(0, cursor - unit.start))
            if played < len(unit.audio):
                unit.audio = unit.audio.copy()
                unit.audio[played:] = 0
            unit.speech = min(unit.speech, played)
            if not unit.video_sent:
                unit.video = None
        self._floating_ends = [s for s in self._floating_ends if s not in targets]
        self._notify_commit()

    def close(self) -> None:
        self._closed = True
        self._room_ev.set()
        self._notify_commit()

    # -----------------------------------------------------------------------------------------
    # consumer side (the tracks)

    def start(self) -> float:
        """Fix t0, the moment sample 0 plays (the first call wins; tracks call it)."""
        if self._t0 is None:
            self._t0 = self.clock.now()
        return self._t0

    async def read_audio(self) -> tuple[int, media.Samples]:
        """The next 20 ms of audio and its pts (in samples), at its time."""
        if self._closed:
            raise TrackEndedError("the synchronizer is closed")
        t0 = self.start()
        size = self.audio_frame_samples
        behind = self._clock_sample() - self._audio_frame * size
        if behind > self._max_lag_samples:
            self._skip_audio_to((self._clock_sample() // size) * size)
        start = self._audio_frame * size
        await self.clock.sleep_until(t0 + start / self.sample_rate)
        if self._closed:
            raise TrackEndedError("the synchronizer is closed")
        self.last_audio_lateness = self.clock.now() - (t0 + start / self.sample_rate)
        samples = self._take_audio(start, start + size, count=True)
        self._audio_frame += 1
        self.stats.audio_frames += 1
        self._prune()
        return start, samples

    async def read_video(self) -> tuple[int, media.I420]:
        """The next video frame and its pts (in samples), at its time."""
        if self._closed:
            raise TrackEndedError("the synchronizer is closed")
        t0 = self.start()
        unit = self._video_unit()
        now_sample = self._clock_sample()
        if now_sample - (unit.end if unit else self._committed_end) > self._max_lag_samples:
            unit = self._skip_video_to(now_sample)
        # Not committed yet: it starts where the timeline ends; it is committed when due.
        target = unit.start if unit is not None else self._committed_end
        await self.clock.sleep_until(t0 + target / self.sample_rate)
        if self._closed:
            raise TrackEndedError("the synchronizer is closed")
        unit = self._video_unit()
        while unit is None:
            self._commit()
            unit = self._video_unit()
        due = t0 + unit.start / self.sample_rate
        if not clocks.reached(self.clock.now(), due):
            await self.clock.sleep_until(due)
        self.last_video_lateness = self.clock.now() - due
        frame = unit.video if unit.video is not None else self.idle_frame
        unit.video_sent = True
        self._video_seq = unit.seq + 1
        self.stats.video_frames += 1
        self._prune()
        return unit.start, frame

    # -----------------------------------------------------------------------------------------
    # timeline

    def _clock_sample(self) -> int:
        if self._t0 is None:
            return 0
        # In whole ticks, so a frame boundary reached within float noise counts as reached.
        elapsed = clocks.ticks(self.clock.now() - self._t0)
        return elapsed * self.sample_rate // clocks.TICKS_PER_SECOND

    def _commit(self) -> Unit:
        if self._pending:
            unit = self._pending.popleft()
            if unit.segment is not None:
                self.stats.speech_units += 1
        else:
            length = self._windows.length(self._next_seq)
            unit = Unit(np.zeros((length, self.channels), np.int16), None)
            self.stats.idle_units += 1
        unit.start = self._committed_end
        unit.seq = self._next_seq
        self._next_seq += 1
        self._committed_end += len(unit.audio)
        self._timeline.append(unit)
        self._room_ev.set()
        self._notify_commit()
        return unit

    def _notify_commit(self) -> None:
        for listener in self._commit_listeners:
            listener()

    def _video_unit(self) -> Unit | None:
        if not self._timeline or self._video_seq >= self._next_seq:
            return None
        index = self._video_seq - self._timeline[0].seq
        return self._timeline[max(0, index)]

    def _take_audio(self, start: int, stop: int, *, count: bool) -> media.Samples:
        """Samples [start, stop) of the timeline; count=False: skipped, not played."""
        while self._committed_end < stop:
            self._commit()
        out = np.zeros((stop - start, self.channels), np.int16)
        for unit in self._timeline:
            if unit.start >= stop:
                break
            lo, hi = max(start, unit.start), min(stop, unit.end)
            if hi > lo:
                out[lo - start : hi - start] = unit.audio[lo - unit.start : hi - unit.start]
                if count and unit.segment is not None and unit.speech:
                    speech_hi = min(hi, unit.start + unit.speech)
                    if speech_hi > lo:
                        self.tracker.played(unit.segment, speech_hi - lo)
            if unit.ends:
                due = [(o, s) for o, s in unit.ends if unit.start + o <= stop]
                if due:
                    unit.ends = [(o, s) for o, s in unit.ends if unit.start + o > stop]
                    for _, segment in due:
                        self.tracker.finish(segment, interrupted=False)
        if self._floating_ends:
            floating, self._floating_ends = self._floating_ends, []
            for segment in floating:
                self.tracker.finish(segment, interrupted=False)
        return out

    def _skip_audio_to(self, start: int) -> None:
        skipped_from = self._audio_frame * self.audio_frame_samples
        if start <= skipped_from:
            return
        self._take_audio(skipped_from, start, count=False)  # ends still fire
        self.stats.skipped_audio_samples += start - skipped_from
        self._audio_frame = start // self.audio_frame_samples
        logger.warning("audio track fell behind, skipped", extra={"samples": start - skipped_from})

    def _skip_video_to(self, sample: int) -> Unit:
        while self._committed_end <= sample:
            self._commit()
        unit = next(u for u in self._timeline if u.end > sample)
        self.stats.skipped_video_frames += unit.seq - self._video_seq
        self._video_seq = unit.seq
        return unit

    def _prune(self) -> None:
        audio_cursor = self._audio_frame * self.audio_frame_samples
        while self._timeline:
            head = self._timeline[0]
            if head.end <= audio_cursor and head.seq < self._video_seq:
                self._timeline.popleft()
                continue
            if len(self._timeline) > 4 * self.fps:  # one track is not being pulled at all
                if head.end > audio_cursor:
                    self._skip_audio_to(head.end)
                self._video_seq = max(self._video_seq, head.seq + 1)
                self._timeline.popleft()
                continue
            break
