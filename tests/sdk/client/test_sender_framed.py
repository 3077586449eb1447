"""The framed audio sender: what it puts on the data channel, acks, and its place in the
framework (an AvatarAudioOut look-alike), checked against the worker's own receiver."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from avatar_sdk import protocol, sender

AVATAR = "avatar_1"
AGENT = "agent_1"


class FakeMeeting:
    """videosdk's Meeting as the sender uses it: send() and event listeners."""

    def __init__(self, deliver: Callable[[Any, str], None] | None = None) -> None:
        self.sent: list[tuple[Any, str]] = []
        self.listeners: list[Any] = []
        self.deliver = deliver
        self.connected = True

    async def send(self, payload: Any, options: dict[str, str]) -> None:
        if not self.connected:
            raise ConnectionError("not connected")
        self.sent.append((payload, options["reliability"]))
        if self.deliver is not None:
            self.deliver(payload, options["reliability"])

    def add_event_listener(self, listener: Any) -> None:
        self.listeners.append(listener)

    def remove_event_listener(self, listener: Any) -> None:
        self.listeners.remove(listener)

    def ack(self, segment: int | None, position: float, interrupted: bool = False) -> None:
        """The worker's stream_ended, as VideoSDK hands it to every listener."""
        payload = protocol.encode_stream_ended(position, interrupted, segment)
        for listener in list(self.listeners):
            listener.handle_event("data", {"payload": payload, "from": AVATAR})

    def decoded(self) -> list[tuple[protocol.Message, str]]:
        return [(protocol.decode_payload(p), r) for p, r in self.sent]


def pcm(samples: int, value: int = 1000) -> bytes:
    return value.to_bytes(2, "little", signed=True) * samples


async def test_audio_is_framed_in_sequence_and_the_segment_end_carries_the_count() -> None:
    meeting = FakeMeeting()
    out = sender.FramedAudioSender(meeting, sample_rate=24_000, participant_id=AVATAR)
    await out.handle_audio_input(pcm(10_000))  # 20,000 bytes: two chunks
    await out.handle_audio_input(pcm(100))
    await out.send_segment_end()
    await out.send_segment_end()  # the framework may call it twice: no empty segment
    messages = meeting.decoded()
    chunks = [m for m, r in messages if isinstance(m, protocol.AudioChunk)]
    assert [(c.segment_id, c.seq) for c in chunks] == [(1, 0), (1, 1), (1, 2)]
    assert all(c.sample_rate == 24_000 and c.channels == 1 for c in chunks)
    assert b"".join(c.pcm for c in chunks) == pcm(10_100)
    assert {r for m, r in messages if isinstance(m, protocol.AudioChunk)} == {"UNRELIABLE"}
    assert messages[-1] == (protocol.SegmentEnd(1, 3), "RELIABLE")
    assert len(messages) == 4
    assert out.segment_id == 2 and out.chunks_sent == 3


async def test_interrupt_names_the_playing_and_the_open_segments_only() -> None:
    meeting = FakeMeeting()
    out = sender.FramedAudioSender(meeting, participant_id=AVATAR)
    await out.interrupt()  # nothing sent yet: nothing to interrupt
    assert meeting.sent == []
    await out.handle_audio_input(pcm(480))
    await out.send_segment_end()  # segment 1 ended, still playing (no ack yet)
    await out.handle_audio_input(pcm(480))  # segment 2 open
    meeting.sent.clear()
    await out.interrupt()
    assert meeting.decoded() == [
        (protocol.Interrupt(1), "RELIABLE"),
        (protocol.Interrupt(2), "RELIABLE"),
    ]
    meeting.ack(1, 0.02, interrupted=True)
    meeting.ack(2, 0.0, interrupted=True)
    meeting.sent.clear()
    await out.handle_audio_input(pcm(480))  # the next reply starts a fresh segment
    await out.interrupt()
    assert meeting.decoded() == [
        (protocol.AudioChunk(pcm(480), 3, 0, 24_000, 1), "UNRELIABLE"),
        (protocol.Interrupt(3), "RELIABLE"),
    ]


async def test_acks_are_consumed_per_segment() -> None:
    meeting = FakeMeeting()
    seen: list[protocol.StreamEnded] = []
    out = sender.FramedAudioSender(meeting, participant_id=AVATAR, on_stream_ended=seen.append)
    with pytest.raises(RuntimeError, match="no segment"):
        await out.wait_stream_ended()
    await out.handle_audio_input(pcm(2400))
    await out.send_segment_end()
    waiter = asyncio.create_task(out.wait_stream_ended())
    await asyncio.sleep(0)
    for listener in meeting.listeners:  # another participant's data is not an ack
        listener.handle_event("data", {"payload": b"\x01\x02", "from": AGENT})
        listener.handle_event(
            "data", {"payload": protocol.encode_stream_ended(9.0, False, 1), "from": "mallory"}
        )
    assert not waiter.done()
    meeting.ack(1, 0.1)
    assert await asyncio.wait_for(waiter, 1) == protocol.StreamEnded(0.1, False, 1)
    assert await out.wait_stream_ended(1) == protocol.StreamEnded(0.1, False, 1)  # kept
    assert seen == [protocol.StreamEnded(0.1, False, 1)]


async def test_send_failures_are_counted_never_raised_and_sending_resumes() -> None:
    meeting = FakeMeeting()
    out = sender.FramedAudioSender(meeting)
    meeting.connected = False
    await out.handle_audio_input(pcm(480))
    await out.send_segment_end()
    assert out.send_failures == 2 and out.chunks_sent == 0
    meeting.connected = True
    await out.handle_audio_input(pcm(480))
    assert out.chunks_sent == 1


async def test_attach_takes_the_stock_senders_place_in_the_framework() -> None:
    class AvatarAudioOut:  # videosdk-agents' stock sender, as the sender recognises it
        async def handle_audio_input(self, audio: bytes) -> None:
            raise AssertionError("the stock sender must not get audio any more")

    class Track:
        def __init__(self, sinks: list[Any]) -> None:
            self.sinks = sinks

    class Obj:
        def __init__(self, **fields: Any) -> None:
            self.__dict__.update(fields)

    stock = AvatarAudioOut()
    speech = Obj(avatar=stock)
    pipeline = Obj(avatar=stock, orchestrator=Obj(speech_generation=speech))
    room = Obj(audio_track=Track([stock]), agent_audio_track=Track([stock, print]), meeting=None)
    out = sender.FramedAudioSender().attach(room, pipeline)
    assert room.audio_track.sinks == [out]
    assert room.agent_audio_track.sinks == [out, print]
    assert pipeline.avatar is out and speech.avatar is out
    # the room joins later: its meeting is picked up at the first send
    meeting = FakeMeeting()
    room.meeting = meeting
    for sink in room.audio_track.sinks:  # what the framework's audio track does
        await sink.handle_audio_input(pcm(480))
    assert len(meeting.sent) == 1 and meeting.listeners == [out._listener]
    await out.aclose()
    assert meeting.listeners == []


async def test_the_workers_receiver_conceals_a_lost_chunk_and_drops_an_interrupted_turn() -> None:
    receiver_module = pytest.importorskip("avatar_worker.receiver")
    av = pytest.importorskip("av")
    receiver = receiver_module.AudioReceiver(AGENT, reorder_window=0.02)
    sent = 0

    def deliver(payload: Any, reliability: str) -> None:
        nonlocal sent
        sent += 1
        if sent == 2:  # the network loses the second chunk
            return
        receiver.feed({"payload": payload, "from": AGENT, "reliability": reliability})

    meeting = FakeMeeting(deliver)
    out = sender.FramedAudioSender(meeting)
    await out.handle_audio_input(pcm(22_500))  # three chunks of 7,500 samples
    await out.send_segment_end()
    meeting.ack(1, 0.9375)  # the turn has played
    await out.handle_audio_input(pcm(4800, value=-5))  # the next turn...
    await out.interrupt()  # ...cut short: none of it plays, the first turn is untouched
    receiver.close()
    frames = []
    ends = 0
    async for item in receiver:
        if isinstance(item, av.AudioFrame):
            frames.append(item)
        else:
            ends += 1
    assert sum(f.samples for f in frames) == 22_500  # the lost chunk became silence
    assert receiver.stats.concealed_samples == 7500
    assert ends == 1
