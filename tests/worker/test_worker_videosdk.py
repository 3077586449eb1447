"""The VideoSDK transport against a fake Meeting at the SDK seam (there is no network here)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import pytest
from videosdk import CustomAudioTrack, CustomVideoTrack
from worker_support import AGENT, LoudnessRenderer, loud_config, run_virtual, signal

from avatar_sdk import api, protocol
from avatar_worker.pipeline import AvatarPipeline, PipelineConfig
from avatar_worker.session import run_session
from avatar_worker.transports.base import JoinError
from avatar_worker.transports.videosdk import VideoSDKTransport

TOKEN = "eyJhbGciOiJIUzI1NiJ9.secret-join-token.sig"


class FakeParticipant:
    def __init__(self, participant_id: str) -> None:
        self.id = participant_id


class FakeMeeting:
    """The SDK's `Meeting` as the adapter uses it; events go through the SDK's own dispatch."""

    def __init__(self, *, fail_join: bool = False, **kwargs: Any) -> None:
        self.kwargs = kwargs
        self.fail_join = fail_join
        self.listeners: list[Any] = []
        self.sent: list[tuple[Any, Any]] = []
        self.pulled: dict[str, int] = {"audio": 0, "video": 0}
        self.joined = False
        self.left = False
        self._pulls: list[asyncio.Task[None]] = []

    def add_event_listener(self, listener: Any) -> None:
        self.listeners.append(listener)

    def emit(self, event: str, data: Any) -> None:
        for listener in self.listeners:
            listener.handle_event(event, data)  # BaseEvent's dispatch, as Meeting.__emit does

    async def async_join(self) -> None:
        if self.fail_join:
            self.emit("meeting-state-changed", {"state": "FAILED"})
            self.emit("error", "Failed to Join in the Meeting")
            return
        self.joined = True
        for key in ("custom_microphone_audio_track", "custom_camera_video_track"):
            self._pulls.append(asyncio.create_task(self._pull(self.kwargs[key])))
        self.emit("meeting-joined", {"participants": [], "messages": [], "base_url": "x"})

    async def _pull(self, track: Any) -> None:
        while True:  # the SDK's producer pulls the custom track as aiortc's sender does
            try:
                await track.recv()
            except Exception:
                return
            self.pulled[track.kind] += 1

    async def send(self, payload: Any, options: Any = None) -> None:
        if not self.joined or self.left:
            raise ConnectionError("Cannot send message, Network is not available.")
        self.sent.append((payload, options))

    def leave(self) -> None:
        self.left = True
        for task in self._pulls:
            task.cancel()
        asyncio.get_running_loop().call_soon(self.emit, "meeting-left", {})

    def deliver(self, payload: bytes | str, sender: str, reliability: str) -> None:
        if isinstance(payload, bytes):  # the SDK's UTF-8 trap
            with contextlib.suppress(UnicodeDecodeError):
                payload = payload.decode("utf-8")
        self.emit(
            "data", {"payload": payload, "from": sender, "timestamp": 1, "reliability": reliability}
        )


def _setup(
    signaling_base_url: str | None = None, **meeting: Any
) -> tuple[AvatarPipeline, VideoSDKTransport, list[FakeMeeting]]:
    cfg = PipelineConfig(width=32, height=32)
    pipeline = AvatarPipeline(
        LoudnessRenderer(loud_config()), config=cfg, agent_participant_id=AGENT
    )
    made: list[FakeMeeting] = []

    def factory(**kwargs: Any) -> FakeMeeting:
        made.append(FakeMeeting(**meeting, **kwargs))
        return made[-1]

    transport = VideoSDKTransport(
        room_id="abcd-efgh-ijkl",
        participant_id="avatar-7",
        token=TOKEN,
        agent_id=lambda: pipeline.receiver.agent_participant_id,
        meeting_factory=factory,
        join_timeout=2.0,
        signaling_base_url=signaling_base_url,
    )
    return pipeline, transport, made


@pytest.mark.parametrize("host", [None, "signal.example.com:8443"])
def test_the_signaling_host_reaches_the_sdk_only_when_set(host: str | None) -> None:
    async def main() -> FakeMeeting:
        pipeline, transport, made = _setup(signaling_base_url=host)
        session = asyncio.create_task(run_session(pipeline, transport, participant_id="avatar-7"))
        await asyncio.sleep(0.2)
        (meeting,) = made
        meeting.emit("participant-left", FakeParticipant(AGENT))
        await session
        return meeting

    meeting = run_virtual(main())
    if host is None:
        assert "signaling_base_url" not in meeting.kwargs  # the SDK keeps its default
    else:
        assert meeting.kwargs["signaling_base_url"] == host


def test_a_session_in_a_videosdk_room(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)

    async def main() -> tuple[api.EndReason | None, FakeMeeting]:
        pipeline, transport, made = _setup()
        session = asyncio.create_task(run_session(pipeline, transport, participant_id="avatar-7"))
        await asyncio.sleep(0.2)
        (meeting,) = made
        for chunk in protocol.pcm_chunks(bytes(4_800) + signal(7_200)):
            meeting.deliver(chunk, AGENT, protocol.UNRELIABLE)
        meeting.deliver(protocol.encode_segment_end().encode(), AGENT, protocol.RELIABLE)
        meeting.deliver(signal(480, 9000), "someone-else", protocol.UNRELIABLE)
        meeting.emit("participant-left", FakeParticipant("someone-else"))
        await asyncio.sleep(1.0)
        meeting.emit("participant-left", FakeParticipant(AGENT))
        return await session, meeting

    reason, meeting = run_virtual(main())
    assert reason is api.EndReason.AGENT_LEFT
    assert meeting.kwargs["meeting_id"] == "abcd-efgh-ijkl"
    assert meeting.kwargs["participant_id"] == "avatar-7"
    assert meeting.kwargs["token"] == TOKEN
    assert isinstance(meeting.kwargs["custom_microphone_audio_track"], CustomAudioTrack)
    assert isinstance(meeting.kwargs["custom_camera_video_track"], CustomVideoTrack)
    assert meeting.pulled["audio"] >= 50 and meeting.pulled["video"] >= 30
    ((payload, options),) = meeting.sent
    assert options == {"reliability": protocol.RELIABLE}
    assert protocol.decode_payload(payload) == protocol.StreamEnded(0.4, False)  # silence counts
    assert meeting.left
    assert TOKEN not in caplog.text


def test_the_meeting_closing_ends_the_session() -> None:
    async def main() -> api.EndReason | None:
        pipeline, transport, made = _setup()
        session = asyncio.create_task(run_session(pipeline, transport, participant_id="avatar-7"))
        await asyncio.sleep(0.2)
        made[0].emit("meeting-left", {})
        return await session

    assert run_virtual(main()) is api.EndReason.ROOM_ENDED


def test_a_failed_join_is_a_join_error_without_the_token(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)

    async def main() -> None:
        pipeline, transport, _ = _setup(fail_join=True)
        assert TOKEN not in repr(transport)
        await run_session(pipeline, transport, participant_id="avatar-7")

    with pytest.raises(JoinError) as failure:
        run_virtual(main())
    assert TOKEN not in str(failure.value)
    assert TOKEN not in caplog.text


def test_an_empty_token_is_refused_before_any_network() -> None:
    with pytest.raises(JoinError):
        VideoSDKTransport(room_id="r", participant_id="p", token="", agent_id=lambda: None)
