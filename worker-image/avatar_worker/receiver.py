"""Audio in: the agent's data-channel messages become an ordered stream of audio and segment ends.

`AudioReceiver.feed()` takes exactly VideoSDK's `on_data` dict and never raises; iterating the
receiver yields `av.AudioFrame`s (tagged with their `Segment` in `frame.opaque`) and
`AudioSegmentEnd` markers, in playback order.

Streams. Every segment is a *stream* with its own buffer. Only the oldest open stream (the
head) releases audio; later ones wait their turn, so two segments never interleave.

* Framed audio (`avatar_sdk.protocol` framed dialect) is put back in sequence order. A missing
  chunk is waited for at most `reorder_window` seconds (or until `reorder_depth` later chunks
  are waiting), then replaced by silence as long as its neighbours, so the timeline never shifts
  and a lost chunk never stalls the stream. A framed `segment_end` carries the chunk count, so
  lost trailing chunks are concealed too. Chunks of a segment that has ended or was
  interrupted are discarded by id.
* Stock PCM carries no sequence numbers: chunks are played in arrival order. The stock
  `segment_end` travels RELIABLE while the audio travels UNRELIABLE, and the two are unordered
  against each other, so stock audio arriving within `reorder_window` after a `segment_end`
  is still the tail of that segment, not the start of a new one — even when all of it was
  overtaken by the `segment_end`.

Segment boundaries. A segment ends at its `segment_end`; when that message is lost, at an idle
gap: no audio for `idle_gap` seconds while nothing of it is left queued here. A framed segment
also ends once a newer segment is flowing and it has been silent for `reorder_window`.

Interrupts. A framed `INTERRUPT` names its segment: exactly that one is discarded, wherever its
audio is (queued here, in the renderer, on the timeline), and its late chunks are dropped. A
stock `INTERRUPT` names nothing; the rule used for it (instead of the reference's blind 300 ms
cooldown, which also swallows the start of a quick reply) is:

    A stock INTERRUPT discards every segment received before it — queued, rendering or
    playing. Stock audio arriving within `interrupt_guard` (20 ms) after it is taken for a
    stale tail of the interrupted turn that the network reordered behind the INTERRUPT, and
    dropped; audio arriving later starts a new segment and plays from its first sample.

Why that is sound for the stock sender: its UNRELIABLE audio and RELIABLE control messages
travel on one SCTP association over one path, so a chunk sent before the INTERRUPT arrives
before it unless packets are reordered — by milliseconds, which the guard covers. The next
reply comes after the user's speech went through STT, LLM and TTS: hundreds of milliseconds,
so it is never clipped (a blind cooldown sized to human turn-taking, like the reference's
300 ms, clips exactly those replies). TTS also runs faster than playback, so by the time a
user barges in the interrupted turn has usually arrived whole and is dropped from the queue.
What no stock rule can fix — a chunk delayed longer than the guard, or an INTERRUPT
retransmitted after the next turn's first chunks — is what the framed sender's segment ids
fix.

Foreign senders. Once the agent is known (`agent_participant_id`, or the first participant
that sends audio when none was given), everything from anyone else is ignored and counted.

Back-pressure ends here: the network cannot be slowed down, so the receiver holds the backlog
(TTS arrives faster than real time) up to `max_buffered_seconds`; audio beyond that is refused
and counted, never silently dropped later in the pipeline.

Bounds (whatever the sender claims, memory and work follow what actually arrived):

* Samples held — queued audio and concealed silence together — never exceed
  `max_buffered_seconds` (120 s): concealment is cut to the room the cap leaves.
* A gap conceals at most what the stream's own sequence numbers justify: its missing chunks
  times the length of a neighbouring chunk of the same stream, at most `max_conceal_seconds`
  (1 s) per gap. A segment of which nothing arrived (a framed `segment_end` for an id never
  seen) conceals nothing, whatever chunk count it carries; it is still acknowledged.
* `stats.concealed` counts the chunks the inserted silence stands for, so it never exceeds
  `stats.concealed_samples`; a claimed count of four billion lost chunks adds nothing.
* Segments held here (open, or ended and not yet read) are at most `max_segments` (128); a
  message that would open one more is refused and counted as overflow.
* Remembered ended ids: 256; malformed reasons: 32 distinct; acks: `segments.ACK_HISTORY`.

Times are compared in whole ticks (`clock.reached`), so a deadline a float's noise away is
reached, and a wait for one that is not lasts at least a tick (see `avatar_worker.clock`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple

import av
import numpy as np

from avatar_sdk import protocol
from avatar_worker import clock as clocks
from avatar_worker import media
from avatar_worker.renderers.contract import AudioSegmentEnd
from avatar_worker.segments import Segment, SegmentTracker

logger = logging.getLogger(__name__)

DEFAULT_REORDER_WINDOW = 0.060  # s: how long a gap in framed audio is waited for
DEFAULT_INTERRUPT_GUARD = 0.020  # s: stock audio this soon after INTERRUPT is a stale tail
DEFAULT_REORDER_DEPTH = 64  # chunks held behind a gap at most (a memory bound; time decides)
DEFAULT_IDLE_GAP = 1.0  # s: a segment with no audio for this long has ended
DEFAULT_MAX_BUFFERED = 120.0  # s of audio held here at most
DEFAULT_MAX_CONCEAL = 1.0  # s of silence inserted for one gap at most
DEFAULT_MAX_SEGMENTS = 128  # segments held here at most (open, or ended and not yet read)
_CLOSED_IDS_KEPT = 256  # recently ended framed segment ids remembered to drop stragglers

InterruptListener = Callable[[list[Segment]], None]


@dataclass
class ReceiverStats:
    """What the receiver did with every message it was fed."""

    accepted: int = 0  # messages from the agent taken into the stream (audio and control)
    ignored: int = 0  # messages from a participant other than the agent (and acks)
    malformed: int = 0  # undecodable messages, and framed audio in a foreign format
    concealed: int = 0  # lost framed chunks replaced by silence
    discarded: int = 0  # late or duplicate framed chunks, chunks of interrupted segments
    overflow: int = 0  # audio refused because the receiver was full
    interrupts: int = 0
    inferred_ends: int = 0  # segments ended by an idle gap instead of their segment_end
    accepted_samples: int = 0
    concealed_samples: int = 0
    overflow_samples: int = 0
    reasons: dict[str, int] = field(default_factory=dict)  # malformed reasons, counted

    def count_malformed(self, reason: str) -> None:
        self.malformed += 1
        key = reason[:80]
        if key in self.reasons or len(self.reasons) < 32:
            self.reasons[key] = self.reasons.get(key, 0) + 1


@dataclass(eq=False)
class _Stream:
    """The buffered audio of one segment, not yet released."""

    segment: Segment
    last_arrival: float
    buffer: deque[media.Samples] = field(default_factory=deque)  # stock: in arrival order
    pending: dict[int, media.Samples] = field(default_factory=dict)  # framed: seq -> samples
    next_seq: int = 0
    end_seq: int | None = None  # framed: chunk count from segment_end
    ended: bool = False  # no more audio will be accepted
    gap_since: float | None = None
    last_length: int = 0  # samples of the last chunk, to size concealment
    closing_since: float | None = None  # stock: segment_end seen, stragglers still welcome
    released_any: bool = False
    held: int = 0  # samples in `buffer` and `pending`, kept as they come and go

    @property
    def framed(self) -> bool:
        return self.segment.framed

    def hold(self, samples: media.Samples, seq: int | None = None) -> None:
        if seq is None:
            self.buffer.append(samples)
        else:
            self.pending[seq] = samples
        self.held += len(samples)

    def take(self, seq: int | None = None) -> media.Samples | None:
        """The oldest stock chunk, or framed chunk `seq`; None when it is not held."""
        if seq is None:
            samples = self.buffer.popleft() if self.buffer else None
        else:
            samples = self.pending.pop(seq, None)
        if samples is not None:
            self.held -= len(samples)
        return samples


_Item = tuple[Segment, media.Samples] | AudioSegmentEnd


class AudioReceiver:
    """Turns data-channel messages from the agent into ordered audio and segment ends."""

    def __init__(
        self,
        agent_participant_id: str | None = None,
        sample_rate: int = 24_000,
        channels: int = 1,
        *,
        tracker: SegmentTracker | None = None,
        clock: clocks.Clock | None = None,
        reorder_window: float = DEFAULT_REORDER_WINDOW,
        reorder_depth: int = DEFAULT_REORDER_DEPTH,
        interrupt_guard: float = DEFAULT_INTERRUPT_GUARD,
        idle_gap: float = DEFAULT_IDLE_GAP,
        max_buffered_seconds: float = DEFAULT_MAX_BUFFERED,
        max_conceal_seconds: float = DEFAULT_MAX_CONCEAL,
        max_segments: int = DEFAULT_MAX_SEGMENTS,
    ) -> None:
        if channels not in (1, 2):
            raise ValueError(f"channels must be 1 or 2, got {channels}")
        self._agent = agent_participant_id
        self.sample_rate = sample_rate
        self.channels = channels
        self.tracker = tracker if tracker is not None else SegmentTracker(sample_rate)
        self._clock = clock if clock is not None else clocks.LoopClock()
        self._reorder_window = reorder_window
        self._reorder_depth = reorder_depth
        self._interrupt_guard = interrupt_guard
        self._stale_until = -float("inf")  # stock audio before this is a stale tail
        self._early_end_at: float | None = None  # a stock segment_end that beat its audio
        self._idle_gap = idle_gap
        self._max_buffered = int(max_buffered_seconds * sample_rate)
        self._max_conceal = int(max_conceal_seconds * sample_rate)
        self.max_segments = max_segments
        self.stats = ReceiverStats()
        self._streams: deque[_Stream] = deque()  # open segments, playback order
        self._stock: _Stream | None = None  # the open stock segment, if any
        self._closed_ids: deque[int] = deque(maxlen=_CLOSED_IDS_KEPT)
        self._out: deque[_Item] = deque()
        self._out_samples = 0
        self._out_ends = 0  # AudioSegmentEnd items in `_out`
        self._wakeup = asyncio.Event()
        self._closed = False
        self._interrupt_listeners: list[InterruptListener] = []
        self.last_audio_at: float | None = None  # clock time of the last accepted audio

    # -----------------------------------------------------------------------------------------
    # public API

    @property
    def agent_participant_id(self) -> str | None:
        return self._agent

    def add_interrupt_listener(self, listener: InterruptListener) -> None:
        """Called synchronously with the segments an interrupt discards."""
        self._interrupt_listeners.append(listener)

    def feed(self, message: object) -> None:
        """One VideoSDK `on_data` dict: {"payload", "from", "timestamp", "reliability"}."""
        try:
            self._feed(message)
        except Exception:  # a bug here must never take the session down
            logger.exception("receiver failed on a message")
            self.stats.count_malformed("internal error")

    def close(self) -> None:
        """No more input: what is buffered is released at once (gaps concealed, open segments
        ended), and iteration ends once it has been consumed."""
        self._closed = True
        self._wakeup.set()

    async def aclose(self) -> None:
        self.close()

    def buffered_seconds(self) -> float:
        return self._buffered_samples() / self.sample_rate

    def __aiter__(self) -> AudioReceiver:
        return self

    async def __anext__(self) -> av.AudioFrame | AudioSegmentEnd:
        while True:
            # Closed: no chunk will come to fill a gap, so every deadline has passed.
            self._pump(self._clock.now(), flush=self._closed)
            if self._out:
                return self._emit(self._out.popleft())
            if self._closed:
                raise StopAsyncIteration
            deadline = self._next_deadline()
            self._wakeup.clear()
            # Whole ticks, and `_pump` decides in ticks too: a deadline it finds unreached is
            # waited for at least one tick, so virtual time moves on to it.
            timeout = None if deadline is None else clocks.remaining(self._clock.now(), deadline)
            # asyncio.timeout, not wait_for: on 3.11 wait_for drops a cancel that lands as the
            # wait completes, and the cancelled task would then wait forever
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._wakeup.wait()

    # -----------------------------------------------------------------------------------------
    # classification

    def _feed(self, message: object) -> None:
        if self._closed:
            return
        data = protocol.decode_data(message)
        decoded = data.message
        if self._agent is not None and data.sender != self._agent:
            self.stats.ignored += 1
            return
        if isinstance(decoded, protocol.Malformed):
            self.stats.count_malformed(decoded.reason)
            return
        if isinstance(decoded, protocol.StreamEnded):
            self.stats.ignored += 1  # an ack is ours to send, never to receive
            return
        now = self._clock.now()
        if isinstance(decoded, protocol.AudioChunk):
            if self._agent is None and data.sender is not None:
                self._agent = data.sender
                logger.info("agent identified", extra={"agent_participant_id": data.sender})
            self._on_audio(decoded, now)
        elif self._agent is None and data.sender is not None:
            self.stats.ignored += 1  # control before any audio: the agent is not known yet
            return
        elif isinstance(decoded, protocol.SegmentEnd):
            self.stats.accepted += 1
            self._on_segment_end(decoded, now)
        elif isinstance(decoded, protocol.Interrupt):
            self.stats.accepted += 1
            self._on_interrupt(decoded)
        self._wakeup.set()

    def _on_audio(self, chunk: protocol.AudioChunk, now: float) -> None:
        if chunk.framed:
            if chunk.sample_rate != self.sample_rate:
                self.stats.count_malformed(
                    f"framed audio at {chunk.sample_rate} Hz, session expects {self.sample_rate}"
                )
                return
            samples = media.convert_channels(
                media.pcm_to_samples(chunk.pcm, chunk.channels or 1), self.channels
            )
        else:
            if not clocks.reached(now, self._stale_until):
                self.stats.discarded += 1
                return
            samples = media.pcm_to_samples(chunk.pcm, self.channels)
        if self._buffered_samples() + len(samples) > self._max_buffered:
            self._refuse(len(samples))
            return
        if chunk.framed:
            assert chunk.segment_id is not None and chunk.seq is not None
            self._on_framed_audio(chunk.segment_id, chunk.seq, samples, now)
        else:
            stream = self._stock
            closing = stream.closing_since if stream is not None else None
            if (
                stream is not None
                and closing is not None
                and clocks.reached(now, closing + self._reorder_window)
            ):
                self._close_stock(stream)  # its stragglers' time is up: this is a new turn
                stream = None
            if stream is None or stream.ended:
                if not self._may_open():
                    self._refuse(len(samples))
                    return
                stream = self._open(None, now)
                self._stock = stream
                early = self._early_end_at
                if early is not None and not clocks.reached(now, early + self._reorder_window):
                    stream.closing_since = early  # its segment_end overtook it
                self._early_end_at = None
            stream.hold(samples)
            stream.last_arrival = now
            self._accept_audio(stream, samples, now)

    def _on_framed_audio(self, wire_id: int, seq: int, samples: media.Samples, now: float) -> None:
        stream = self._framed_stream(wire_id)
        if stream is None:
            if wire_id in self._closed_ids:
                self.stats.discarded += 1
                return
            if not self._may_open():
                self._refuse(len(samples))
                return
            stream = self._open(wire_id, now)
        if (
            seq < stream.next_seq
            or seq in stream.pending
            or (stream.end_seq is not None and seq >= stream.end_seq)
        ):
            self.stats.discarded += 1
            return
        stream.hold(samples, seq)
        stream.last_arrival = now
        self._accept_audio(stream, samples, now)

    def _refuse(self, samples: int) -> None:
        """Audio (or a new segment) that does not fit: counted, never silently dropped."""
        self.stats.overflow += 1
        self.stats.overflow_samples += samples
        if self.stats.overflow == 1 or self.stats.overflow % 100 == 0:
            logger.warning(
                "receiver full, audio refused",
                extra={
                    "buffered_s": self.buffered_seconds(),
                    "segments": self.held_segments(),
                    "refused": self.stats.overflow,
                },
            )

    def _accept_audio(self, stream: _Stream, samples: media.Samples, now: float) -> None:
        self.stats.accepted += 1
        self.stats.accepted_samples += len(samples)
        stream.segment.received_samples += len(samples)
        self.last_audio_at = now

    def _on_segment_end(self, message: protocol.SegmentEnd, now: float) -> None:
        if message.segment_id is None:
            stream = self._stock
            if stream is None or stream.ended:
                self._early_end_at = now  # its audio may still be on the way
                return
            if stream.closing_since is not None:
                return  # a duplicate
            stream.closing_since = now  # ends after the reorder window (stragglers join it)
            return
        stream = self._framed_stream(message.segment_id)
        if stream is None:
            if message.segment_id in self._closed_ids:
                return
            if not self._may_open():
                self._refuse(0)
                return
            # All its audio was lost (or is still on the way: the segment_end is RELIABLE, the
            # audio UNRELIABLE). It is acknowledged like any segment; with nothing of it seen,
            # nothing tells how long its chunks were, so its gap conceals nothing.
            stream = self._open(message.segment_id, now)
        stream.end_seq = max(message.chunks or 0, stream.next_seq)
        stream.ended = True
        if stream.gap_since is None and stream.next_seq < stream.end_seq and not stream.pending:
            stream.gap_since = now  # trailing chunks missing: wait for them, then conceal

    def _on_interrupt(self, message: protocol.Interrupt) -> None:
        self.stats.interrupts += 1
        if message.segment_id is None:
            targets = self.tracker.live
            self._stale_until = self._clock.now() + self._interrupt_guard
            self._early_end_at = None
            self._streams.clear()
            self._stock = None
            self._out.clear()
            self._out_samples = 0
            self._out_ends = 0
        else:
            target = self.tracker.find_live(message.segment_id)
            targets = [target] if target is not None else []
            self._streams = deque(
                s for s in self._streams if s.segment.wire_id != message.segment_id
            )
            if target is not None:  # only a live segment can have items waiting in `_out`
                kept: deque[_Item] = deque()
                for item in self._out:
                    segment = item.segment if isinstance(item, AudioSegmentEnd) else item[0]
                    if segment is not None and segment.wire_id == message.segment_id:
                        if isinstance(item, AudioSegmentEnd):
                            self._out_ends -= 1
                        else:
                            self._out_samples -= len(item[1])
                        continue
                    kept.append(item)
                self._out = kept
        for segment in targets:
            if segment.wire_id is not None:
                self._closed_ids.append(segment.wire_id)
        if message.segment_id is not None and message.segment_id not in self._closed_ids:
            self._closed_ids.append(message.segment_id)  # its audio has not arrived yet
        logger.info(
            "interrupt",
            extra={"segment_id": message.segment_id, "segments": [s.key for s in targets]},
        )
        for listener in self._interrupt_listeners:
            listener(targets)
        for segment in targets:
            self.tracker.finish(segment, interrupted=True)

    # -----------------------------------------------------------------------------------------
    # release

    def _open(self, wire_id: int | None, now: float) -> _Stream:
        stream = _Stream(self.tracker.open(wire_id), last_arrival=now)
        if wire_id is not None:
            # Framed segments keep their id order among streams that have not started.
            index = len(self._streams)
            while index > 0:
                other = self._streams[index - 1]
                if other.released_any or other.segment.wire_id is None:
                    break
                if not _serial_before(wire_id, other.segment.wire_id):
                    break
                index -= 1
            self._streams.insert(index, stream)
        else:
            self._streams.append(stream)
        return stream

    def _close_stock(self, stream: _Stream) -> None:
        stream.ended = True
        if stream is self._stock:
            self._stock = None

    def _framed_stream(self, wire_id: int) -> _Stream | None:
        return next((s for s in self._streams if s.segment.wire_id == wire_id), None)

    def _pump(self, now: float, *, flush: bool = False) -> None:
        """Move whatever may be played from the head stream(s) to the output queue.

        `flush`: no more input will come, so no gap is waited for and open segments end.
        """
        while self._streams:
            head = self._streams[0]
            if head.framed:
                self._release_framed(head, now, flush=flush)
            else:
                while (samples := head.take()) is not None:
                    self._release(head, samples)
                closing = head.closing_since
                if closing is not None and (
                    flush or clocks.reached(now, closing + self._reorder_window)
                ):
                    self._close_stock(head)
            if not head.ended and (flush or self._should_infer_end(head, now)):
                self._infer_end(head, now)
                continue
            if not head.ended or head.buffer or head.pending:
                break
            if head.framed and head.end_seq is not None and head.next_seq < head.end_seq:
                break  # trailing chunks still awaited
            self._streams.popleft()
            if head is self._stock:
                self._stock = None
            if head.segment.wire_id is not None:
                self._closed_ids.append(head.segment.wire_id)
            head.segment.input_ended = True
            self._out.append(AudioSegmentEnd(head.segment))
            self._out_ends += 1

    def _release_framed(self, stream: _Stream, now: float, *, flush: bool = False) -> None:
        while True:
            samples = stream.take(stream.next_seq)
            if samples is not None:
                self._release(stream, samples)
                stream.next_seq += 1
                stream.gap_since = None
                continue
            missing_tail = stream.end_seq is not None and stream.next_seq < stream.end_seq
            if not stream.pending and not missing_tail:
                return
            if stream.gap_since is None:
                stream.gap_since = now
            waited = flush or clocks.reached(now, stream.gap_since + self._reorder_window)
            if not waited and len(stream.pending) < self._reorder_depth:
                return
            self._conceal(stream)

    def _conceal(self, stream: _Stream) -> None:
        """Replace missing chunks up to the next one held (or the segment's end) with silence.

        What a gap may cost is what the stream itself justifies: its missing sequence numbers
        times the length of its own neighbouring chunk (the last one released, else the next
        one held; a framed chunk is at most `protocol.MAX_FRAMED_PCM_BYTES`), at most
        `max_conceal_seconds`, and never more than the buffer cap leaves room for. A stream
        nothing of which arrived conceals nothing. `concealed` counts the chunks the silence
        stands for, never the numbers a sender claims.
        """
        if stream.pending:
            upto = min(stream.pending)
        else:
            upto = stream.end_seq if stream.end_seq is not None else stream.next_seq
        missing = max(0, upto - stream.next_seq)
        per_chunk = stream.last_length or (
            len(stream.pending[upto]) if upto in stream.pending else 0
        )
        room = max(0, self._max_buffered - self._buffered_samples())
        total = min(missing * per_chunk, self._max_conceal, room)
        chunks = min(missing, -(-total // per_chunk)) if total else 0
        if total:
            self._release(stream, np.zeros((total, self.channels), np.int16), concealed=True)
        self.stats.concealed += chunks
        self.stats.concealed_samples += total
        stream.segment.concealed_samples += total
        stream.next_seq = upto
        stream.gap_since = None
        if missing:
            logger.debug(
                "lost chunks concealed",
                extra={
                    "segment_id": stream.segment.wire_id,
                    "missing": missing,
                    "chunks": chunks,
                    "samples": total,
                },
            )

    def _release(self, stream: _Stream, samples: media.Samples, *, concealed: bool = False) -> None:
        if len(samples) == 0:
            return
        if not concealed:
            stream.last_length = len(samples)
        stream.released_any = True
        self._out.append((stream.segment, samples))
        self._out_samples += len(samples)

    def _should_infer_end(self, stream: _Stream, now: float) -> bool:
        if stream.closing_since is not None:
            return False  # its segment_end came: it ends by itself
        if not self._out and clocks.reached(now, stream.last_arrival + self._idle_gap):
            return True
        newer_flowing = len(self._streams) > 1
        return (
            stream.framed
            and newer_flowing
            and clocks.reached(now, stream.last_arrival + self._reorder_window)
        )

    def _infer_end(self, stream: _Stream, now: float) -> None:
        self.stats.inferred_ends += 1
        stream.segment.inferred_end = True
        stream.ended = True
        if stream.framed:
            stream.end_seq = max([stream.next_seq, *(seq + 1 for seq in stream.pending)])
            while stream.pending:  # conceal inner gaps now, nothing trailing
                self._conceal(stream)
                self._release_framed(stream, now)
        if stream is self._stock:
            self._stock = None
        logger.info(
            "segment end inferred from an idle gap",
            extra={"segment": stream.segment.key, "segment_id": stream.segment.wire_id},
        )

    def _next_deadline(self) -> float | None:
        if not self._streams:
            return None
        head = self._streams[0]
        deadlines: list[float] = []
        if head.gap_since is not None:
            deadlines.append(head.gap_since + self._reorder_window)
        if head.closing_since is not None and not head.ended:
            deadlines.append(head.closing_since + self._reorder_window)
        if not head.ended and head.closing_since is None:
            deadlines.append(head.last_arrival + self._idle_gap)
            if head.framed and len(self._streams) > 1:
                deadlines.append(head.last_arrival + self._reorder_window)
        return min(deadlines) if deadlines else None

    def _buffered_samples(self) -> int:
        return self._out_samples + sum(s.held for s in self._streams)

    def held_segments(self) -> int:
        """Segments held here: open streams, and ended ones whose end has not been read."""
        return len(self._streams) + self._out_ends

    def _may_open(self) -> bool:
        return self.held_segments() < self.max_segments

    def _emit(self, item: _Item) -> av.AudioFrame | AudioSegmentEnd:
        if isinstance(item, AudioSegmentEnd):
            self._out_ends -= 1
            return item
        segment, samples = item
        self._out_samples -= len(samples)
        frame = media.samples_to_frame(samples, self.sample_rate)
        # A fresh tag per frame: PyAV keys `opaque` by the object, and a frame that dies
        # takes the entry with it — sharing the Segment itself would untag its siblings.
        frame.opaque = SegmentTag(segment)
        return frame


def _serial_before(a: int, b: int) -> bool:
    """Segment ids wrap at 2**32: `a` comes before `b` (RFC 1982 serial arithmetic)."""
    return a != b and ((b - a) % 2**32) < 2**31


class SegmentTag(NamedTuple):
    """What the receiver attaches to each frame it yields (`frame.opaque`)."""

    segment: Segment


def segment_of(frame: av.AudioFrame) -> Segment | None:
    """The segment a receiver frame belongs to (None for frames from elsewhere)."""
    opaque = frame.opaque
    return opaque.segment if isinstance(opaque, SegmentTag) else None
