"""`avatar-worker render` and `run` as a user calls them, and the session's ways to end."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest
from worker_support import AGENT, LoudnessRenderer, loud_config, run_virtual, signal

from avatar_sdk import api, protocol
from avatar_sdk.workerenv import WorkerSettings
from avatar_worker import cli, renderers
from avatar_worker.pipeline import AvatarPipeline, PipelineConfig
from avatar_worker.session import run_session
from avatar_worker.transports.base import JoinError
from avatar_worker.transports.localroom import LocalRoom, LocalTransport

REPORT_KEYS = {
    "frames",
    "audio_seconds",
    "video_seconds",
    "fps",
    "realtime_factor",
    "first_frame_ms",
}


def write_wav(path: Path, rate: int, channels: int, seconds: float, onset: float) -> None:
    """A tone that starts at `onset` seconds, as a WAV of any rate and channel count."""
    n = int(rate * seconds)
    t = np.arange(n) / rate
    tone = (np.sin(2 * np.pi * 440 * t) * 12_000 * (t >= onset)).astype(np.int16)
    layout = "mono" if channels == 1 else "stereo"
    with av.open(str(path), "w", format="wav") as container:
        stream = container.add_stream("pcm_s16le", rate=rate, layout=layout)
        frame = av.AudioFrame.from_ndarray(
            np.repeat(tone[:, None], channels, axis=1).reshape(1, -1), format="s16", layout=layout
        )
        frame.sample_rate = rate
        frame.pts = 0
        for packet in stream.encode(frame):
            container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)


@pytest.fixture
def test_renderer(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(renderers, "create", lambda name, config: LoudnessRenderer(config))


@pytest.mark.usefixtures("test_renderer")
@pytest.mark.parametrize("framed", [False, True], ids=["stock", "framed"])
def test_render_a_wav_to_mp4_with_a_report(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], framed: bool
) -> None:
    wav, out, report = tmp_path / "in.wav", tmp_path / "out.mp4", tmp_path / "r.json"
    write_wav(wav, 44_100, 2, seconds=1.5, onset=0.25)
    argv = ["render", "--audio", str(wav), "--out", str(out), "--report", str(report)]
    argv += ["--width", "64", "--height", "64", "--renderer", "waveform", "--device", "cpu"]
    assert cli.main([*argv, "--framed"] if framed else argv) == 0
    printed = json.loads(capsys.readouterr().out)
    assert set(printed) == REPORT_KEYS
    assert json.loads(report.read_text()) == printed
    assert printed["audio_seconds"] == pytest.approx(1.5, abs=0.021)
    assert printed["frames"] == round(printed["video_seconds"] * 30)
    assert printed["realtime_factor"] > 1.0
    with av.open(str(out)) as container:
        audio = np.concatenate(
            [f.to_ndarray().reshape(-1) for f in container.decode(container.streams.audio[0])]
        )
        container.seek(0)
        luma = [float(f.to_ndarray(format="gray").mean()) for f in container.decode(video=0)]
        assert container.streams.video[0].codec_context.name == "h264"
        assert container.streams.audio[0].codec_context.name == "aac"
    # the sound starts in the frame whose window holds its onset (AAC priming is edited out)
    onset = int(np.argmax(np.abs(audio) > 0.05)) / 24_000
    first_bright = next(i for i, v in enumerate(luma) if v > 20)
    assert onset == pytest.approx(0.25, abs=0.01)
    assert first_bright == int(onset * 30)


def test_render_refuses_what_it_cannot_read(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = ["render", "--audio", str(tmp_path / "no.wav"), "--out", str(tmp_path / "o.mp4")]
    assert cli.main([*missing, "--renderer", "no-such-renderer"]) == 2
    assert "unknown renderer" in capsys.readouterr().err


@pytest.mark.usefixtures("test_renderer")
def test_render_refuses_a_file_without_audio(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"not a wav at all")
    assert cli.main(["render", "--audio", str(bad), "--out", str(tmp_path / "o.mp4")]) == 2
    assert "cannot" in capsys.readouterr().err


def test_run_with_a_bad_environment_names_the_variable(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for key in ("AVATAR_SESSION_NAME", "AVATAR_ROOM_ID", "AVATAR_PARTICIPANT_ID"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("AVATAR_VIDEO_FPS", "500")
    assert cli.main(["run"]) == 2
    err = capsys.readouterr().err
    assert "AVATAR_VIDEO_FPS" in err and "AVATAR_ROOM_ID" in err


def test_run_health_port_flag_overrides_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Workers run as local processes share one network: the demo turns their probes off."""
    monkeypatch.setenv("AVATAR_SESSION_NAME", "s1")
    monkeypatch.setenv("AVATAR_ROOM_ID", "room-1")
    monkeypatch.setenv("AVATAR_PARTICIPANT_ID", "avatar-1")
    monkeypatch.setenv("AVATAR_HEALTH_PORT", "8081")
    seen: list[WorkerSettings] = []

    async def fake_run(settings: WorkerSettings) -> int:
        seen.append(settings)
        return 0

    monkeypatch.setattr(cli, "_run", fake_run)
    assert cli.main(["run", "--health-port", "0"]) == 0
    assert cli.main(["run"]) == 0
    assert [s.health_port for s in seen] == [0, 8081]


# ---------------------------------------------------------------------------------------------
# how a live session ends


class RecordingReporter:
    """Stands in for StatusReporter: records what the session reports."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []

    def start(self) -> None:
        self.calls.append(("start", None))

    def joined(self) -> None:
        self.calls.append(("joined", None))

    def playback(self, **fields: Any) -> None:
        self.calls.append(("playback", fields))

    def ended(self, reason: api.EndReason | None) -> None:
        self.calls.append(("ended", reason))

    async def aclose(self) -> None:
        self.calls.append(("aclose", None))


def _pipeline() -> AvatarPipeline:
    return AvatarPipeline(
        LoudnessRenderer(loud_config()),
        config=PipelineConfig(width=32, height=32),
        agent_participant_id=AGENT,
    )


def test_a_session_reports_joined_playback_and_its_end() -> None:
    async def main() -> tuple[api.EndReason | None, RecordingReporter]:
        room = LocalRoom()
        pipeline = _pipeline()
        reporter = RecordingReporter()
        transport = LocalTransport(room, "avatar", lambda: AGENT)
        session = asyncio.create_task(
            run_session(pipeline, transport, participant_id="avatar", reporter=reporter)  # type: ignore[arg-type]
        )
        agent = room.join(AGENT)
        await asyncio.sleep(0.2)
        for chunk in protocol.pcm_chunks(signal(24_000)):
            await agent.send(chunk, protocol.UNRELIABLE)
        await agent.send(protocol.encode_segment_end(), protocol.RELIABLE)
        await asyncio.sleep(2.0)
        await agent.leave()
        return await session, reporter

    reason, reporter = run_virtual(main())
    assert reason is api.EndReason.AGENT_LEFT
    kinds = [kind for kind, _ in reporter.calls]
    assert kinds[:2] == ["start", "joined"] and kinds[-2:] == ["ended", "aclose"]
    playback = [fields for kind, fields in reporter.calls if kind == "playback"]
    assert any(p["speaking"] for p in playback)
    assert playback[-1]["segments"] == 1 and not playback[-1]["speaking"]
    assert reporter.calls[-2] == ("ended", api.EndReason.AGENT_LEFT)


def test_without_an_operator_the_worker_ends_itself_when_idle() -> None:
    async def main() -> tuple[api.EndReason | None, float]:
        loop = asyncio.get_running_loop()
        room = LocalRoom()
        transport = LocalTransport(room, "avatar", lambda: AGENT)
        started = loop.time()
        reason = await run_session(
            _pipeline(), transport, participant_id="avatar", idle_timeout=5.0
        )
        return reason, loop.time() - started

    reason, took = run_virtual(main())
    assert reason is api.EndReason.IDLE_TIMEOUT
    assert 5.0 <= took <= 5.6


def test_a_stop_request_leaves_the_room_without_ending_the_session() -> None:
    """SIGTERM: the Pod is going — at the session's end, or deleted by a drain or a user, when
    the operator starts another in its place — so the worker reports no end of its own (found
    with real Pods: its reason-less Ended ended a session the operator meant to keep)."""

    async def main() -> tuple[api.EndReason | None, list[str], RecordingReporter]:
        room = LocalRoom()
        stop = asyncio.Event()
        reporter = RecordingReporter()
        transport = LocalTransport(room, "avatar", lambda: AGENT)
        session = asyncio.create_task(
            run_session(
                _pipeline(),
                transport,
                participant_id="avatar",
                stop=stop,
                reporter=reporter,  # type: ignore[arg-type]
            )
        )
        await asyncio.sleep(1.0)
        stop.set()
        return await session, room.participants, reporter

    reason, left_behind, reporter = run_virtual(main())
    assert reason is None and left_behind == []
    assert any(call[0] == "joined" for call in reporter.calls)
    assert not [call for call in reporter.calls if call[0] == "ended"], reporter.calls


def test_a_join_that_fails_is_reported_as_an_error() -> None:
    async def main() -> RecordingReporter:
        room = LocalRoom()
        room.join("avatar")  # the participant id is taken
        reporter = RecordingReporter()
        transport = LocalTransport(room, "avatar", lambda: AGENT)
        with pytest.raises(JoinError):
            await run_session(_pipeline(), transport, participant_id="avatar", reporter=reporter)  # type: ignore[arg-type]
        return reporter

    reporter = run_virtual(main())
    assert ("ended", api.EndReason.ERROR) in reporter.calls


def test_a_sigterm_after_the_session_exits_with_the_sessions_code() -> None:
    """The kubelet deletes a finished worker's Pod while its process still tears down: the
    SIGTERM then ends it with its session's code (0), not 143."""
    import subprocess
    import sys
    import textwrap

    script = textwrap.dedent(
        """
        import asyncio, time
        from avatar_worker import cli

        async def session_over() -> None:
            cli._stop_on_signals()  # as during the session
            cli._exit_with_on_sigterm(0)

        asyncio.run(session_over())  # the loop closes: its handlers go
        print("tearing down", flush=True)
        time.sleep(30)
        """
    )
    process = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    assert process.stdout.readline().strip() == "tearing down"
    process.terminate()
    assert process.wait(timeout=10) == 0
