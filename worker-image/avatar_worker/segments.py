"""TTS segments and the ledger that acknowledges each one exactly once.

A *segment* is one TTS turn of the agent: the audio between two boundaries. With framed audio
the agent numbers segments itself (`Segment.wire_id`); with stock PCM the receiver cuts them at
`segment_end`, `INTERRUPT` and idle gaps, and numbers them locally (`Segment.key`).

The `SegmentTracker` is the single place where a segment ends. It counts the samples of each
segment that actually left the audio track (`played`) — the synchronizer reports them as each
20 ms frame is handed to the sender — and sends the agent its `stream_ended` ack exactly once,
whichever happens first: the segment's last sample leaves the track, or it is interrupted.
`playback_position` is therefore what the user heard (concealed gaps included, since they took
their place on the timeline), never what was pushed.

`SegmentTracker.acks` keeps the last `ACK_HISTORY` (1,024) acks sent, for tests, benchmarks
and logs of a session's end: a fixed-size history, so a session that runs for days (or an agent
that sends thousands of empty segments) costs the same memory as a short one. The counters
(`PlaybackCounters.segments`, `.interrupts`) count every segment ever acknowledged.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from avatar_sdk import protocol

logger = logging.getLogger(__name__)

ACK_HISTORY = 1024  # acks kept in `SegmentTracker.acks`, newest last


@dataclass(eq=False)
class Segment:
    """One TTS turn; identity is the object (`eq=False`), `key` is for logs and tests."""

    key: int
    wire_id: int | None  # the framed segment id; None for stock PCM
    sample_rate: int
    received_samples: int = 0  # accepted from the agent
    concealed_samples: int = 0  # silence inserted for lost framed chunks
    played_samples: int = 0  # left the audio track
    input_ended: bool = False  # segment_end seen (or inferred from an idle gap)
    inferred_end: bool = False
    finished: bool = False  # acknowledged with stream_ended
    interrupted: bool = False

    @property
    def framed(self) -> bool:
        return self.wire_id is not None

    @property
    def position(self) -> float:
        """Seconds of this segment that left the audio track."""
        return self.played_samples / self.sample_rate

    def __repr__(self) -> str:
        wire = f" wire={self.wire_id}" if self.framed else ""
        return f"<Segment {self.key}{wire} played={self.played_samples}>"


StreamEndedCallback = Callable[[Segment, protocol.StreamEnded], None]


@dataclass
class PlaybackCounters:
    """What the status reports about playback."""

    segments: int = 0  # finished, interrupted ones included
    interrupts: int = 0
    speaking: bool = False
    position: float = 0.0  # of the segment playing now, or the last one


class SegmentTracker:
    """Creates segments, counts what played, and ends each one exactly once."""

    def __init__(
        self, sample_rate: int, on_stream_ended: StreamEndedCallback | None = None
    ) -> None:
        self.sample_rate = sample_rate
        self._on_stream_ended = on_stream_ended
        self._next_key = 1
        self._live: list[Segment] = []
        self._current: Segment | None = None  # the segment whose audio played last
        self.counters = PlaybackCounters()
        # The last ACK_HISTORY acks sent (a fixed-size history), for tests and benchmarks.
        self.acks: deque[protocol.StreamEnded] = deque(maxlen=ACK_HISTORY)
        self._listeners: list[Callable[[], None]] = []

    def set_stream_ended_callback(self, callback: StreamEndedCallback | None) -> None:
        self._on_stream_ended = callback

    def add_change_listener(self, listener: Callable[[], None]) -> None:
        """Called (synchronously) whenever the counters change."""
        self._listeners.append(listener)

    def open(self, wire_id: int | None = None) -> Segment:
        segment = Segment(self._next_key, wire_id, self.sample_rate)
        self._next_key += 1
        self._live.append(segment)
        return segment

    @property
    def live(self) -> list[Segment]:
        """Segments opened and not yet acknowledged, oldest first."""
        return list(self._live)

    def find_live(self, wire_id: int) -> Segment | None:
        return next((s for s in self._live if s.wire_id == wire_id), None)

    def played(self, segment: Segment, samples: int) -> None:
        if samples <= 0 or segment.finished:
            return
        segment.played_samples += samples
        changed = not self.counters.speaking or self._current is not segment
        self._current = segment
        self.counters.speaking = True
        self.counters.position = segment.position
        if changed:
            self._notify()

    def finish(self, segment: Segment, *, interrupted: bool) -> bool:
        """Acknowledge `segment`; False (and nothing sent) when it already was."""
        if segment.finished:
            return False
        segment.finished = True
        segment.interrupted = interrupted
        if segment in self._live:
            self._live.remove(segment)
        self.counters.segments += 1
        if interrupted:
            self.counters.interrupts += 1
        if self._current is segment:
            self.counters.position = segment.position
            self.counters.speaking = False
            self._current = None
        ack = protocol.StreamEnded(segment.position, interrupted, segment.wire_id)
        self.acks.append(ack)
        logger.info(
            "segment ended",
            extra={
                "segment": segment.key,
                "segment_id": segment.wire_id,
                "playback_position": round(segment.position, 3),
                "interrupted": interrupted,
                "inferred_end": segment.inferred_end,
            },
        )
        if self._on_stream_ended is not None:
            self._on_stream_ended(segment, ack)
        self._notify()
        return True

    def _notify(self) -> None:
        for listener in self._listeners:
            listener()
