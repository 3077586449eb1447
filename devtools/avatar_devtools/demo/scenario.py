"""The demo's script, from an empty cluster to nothing left behind.

1. Start the system (`system.DemoSystem`): emulated API, simulated kubelet running workers as
   processes, the real operator, the room server; open the room; a viewer joins it (recording
   what it receives) and so does the agent.
2. The agent creates its AvatarSession with `AvatarSessionClient` and waits, watching, until the
   worker has joined the room (time-to-joined: create → status Joined, as the agent sees it).
3. It speaks a turn and barges in halfway with `INTERRUPT`, speaks a short reply to its end
   (`segment_end`), each acknowledged by the worker's `stream_ended`; then it leaves the room.
4. The worker reports the session Ended (`AgentLeft`) and exits; the operator deletes its Pod
   and Secret and releases its GPU; the agent deletes the session.
5. The same avatar again, warm (`warm`): an AvatarPool of one worker with the same settings,
   and, once it is ready, a second session in a second room that names the pool joins on it;
   the agent speaks, leaves, and the session and then the pool are deleted.
6. The viewer's recording is closed (the MP4), the figures are measured from what it received,
   and the run is checked: every step happened, and nothing leaked.

With `real_cluster`, step 1 starts `realsystem.RealDemoSystem` instead: a real control plane
(kube-apiserver, controller-manager, scheduler, the node agent running Pods as processes) and
the operator installed with helm as its own Pod; the rest of the script is the same.

With `serve`, the room server also serves the viewer page (its `viewer:` line is printed
first), fed with the session's status as the agent's watch sees it; after step 3 the agent
stays in the room — the page speaks, barges in and ends turns as that agent — until Ctrl-C.

`run(Options)` returns a `Report` whose `problems` are empty only if all of that held; the
command line (`cli`) prints it and the integration tests assert on it.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from avatar_devtools.demo import agent as demo_agent
from avatar_devtools.demo import board as demo_board
from avatar_devtools.demo import measure, realsystem, speech, system
from avatar_devtools.demo import warm as demo_warm

if TYPE_CHECKING:
    from avatar_sdk import api
    from avatar_sdk.client import AvatarSessionClient

AGENT_ID = "agent"
VIEWER_ID = "viewer"
GREETING_IDLE_SECONDS = 0.5  # the avatar idles (blinks) before the agent speaks
BARGE_IN_GAP_SECONDS = 0.8  # between the interrupt's ack and the reply: the user speaks
AFTER_REPLY_SECONDS = 0.5
END_TIMEOUT_SECONDS = 20.0
EMULATED_UP = (
    "emulated cluster up: 2 simulated nodes with 2 H100s each, kubelet running "
    "worker Pods as local processes; operator active"
)

Demo = system.DemoSystem | realsystem.RealDemoSystem


@dataclasses.dataclass
class Options:
    workdir: Path
    output: Path | None = Path("demo.mp4")
    audio: Path | None = None  # the first turn; None: espeak-ng
    renderer: str = "portrait"
    width: int = 512
    height: int = 512
    fps: int = 30
    sample_rate: int = 24_000
    max_turn_seconds: float | None = None
    interrupt_fraction: float = 0.5  # of the first turn
    room_id: str = "demo-room"
    vram_mib: int = 2048
    join_timeout: float = 90.0
    live: bool = False
    serve: bool = False  # the viewer page; the room stays open after the script until Ctrl-C
    port: int = 0  # the room server's (and with `serve`, the page's) port; 0: any free one
    real_cluster: bool = False  # a real control plane, the operator installed with helm
    warm: bool = True  # then the same avatar from a warm AvatarPool (`warm`), not with `serve`
    out: TextIO = dataclasses.field(default_factory=lambda: sys.stdout)


@dataclasses.dataclass
class Report:
    speech_source: str = ""
    session_name: str = ""
    placement: str = ""
    time_to_joined_s: float | None = None
    av_offset: measure.Offset | None = None
    worker_sync_error_ms: float | None = None
    interrupt_to_silence_ms: float | None = None
    interrupt_to_ack_ms: float | None = None
    turns: list[demo_agent.Turn] = dataclasses.field(default_factory=list)
    end_phase: str | None = None
    end_reason: str | None = None
    worker_exit_code: int | None = None
    children: dict[str, str] = dataclasses.field(default_factory=dict)  # kind → name
    leaks: list[str] = dataclasses.field(default_factory=list)
    session_deleted: bool = False
    video_frames: int = 0
    audio_seconds: float = 0.0
    recording: Path | None = None
    wall_seconds: float = 0.0
    final_table: list[str] = dataclasses.field(default_factory=list)
    worker_log_tail: str = ""
    warm: demo_warm.WarmJoin | None = None
    problems: list[str] = dataclasses.field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


class SessionMonitor:
    """The agent's watch on its session: the latest state, for the board and for waiting."""

    def __init__(
        self,
        client: AvatarSessionClient,
        name: str,
        board: demo_board.StatusBoard,
        on_status: Callable[[api.AvatarSession], None] | None = None,
    ):
        self._client = client
        self._name = name
        self._board = board
        self._on_status = on_status
        self.latest: api.AvatarSession | None = None
        self.deleted = False
        self._changed = asyncio.Event()
        self._watch_atask: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._watch_atask = asyncio.create_task(self._watch(), name="session-monitor")

    async def _watch(self) -> None:
        from avatar_sdk import client

        last_phase: str | None = None
        async for event in self._client.watch(self._name):
            if event.type == client.DELETED:
                self.deleted = True
                self._board.event(f"session {self._name} deleted")
            else:
                self.latest = event.session
                self._board.update(self.latest)
                if self._on_status is not None:
                    self._on_status(self.latest)
                phase = self.latest.status.phase
                if phase is not None and phase.value != last_phase:
                    last_phase = phase.value
                    message = self.latest.status.message or ""
                    self._board.event(f"session phase {phase.value}: {message}".rstrip(": "))
            self._changed.set()

    async def wait(self, predicate: Any, timeout: float) -> bool:  # noqa: ASYNC109
        """Until `predicate(monitor)` holds; False at the timeout."""
        try:
            async with asyncio.timeout(timeout):
                while not predicate(self):
                    self._changed.clear()
                    await self._changed.wait()
        except TimeoutError:
            return False
        return True

    async def aclose(self) -> None:
        if self._watch_atask is not None:
            self._watch_atask.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch_atask


def _finished(monitor: SessionMonitor) -> bool:
    latest = monitor.latest
    phase = latest.status.phase if latest is not None else None
    return phase is not None and phase.finished


async def run(options: Options) -> Report:
    """The whole demo; see the module docstring."""
    started = time.monotonic()
    report = Report()
    words = speech.prepare(
        options.workdir / "speech",
        sample_rate=options.sample_rate,
        audio=options.audio,
        max_seconds=options.max_turn_seconds,
    )
    report.speech_source = words.source
    board = demo_board.StatusBoard(options.out, live=options.live)
    try:
        kind = realsystem.RealDemoSystem if options.real_cluster else system.DemoSystem
        async with kind(
            options.workdir / "system",
            viewer=options.serve,
            room_port=options.port,
            agent_id=AGENT_ID,
        ) as demo:
            if demo.viewer is not None:
                # before the board's first line: a live board redraws only what it drew
                options.out.write(f"viewer: {demo.viewer.url}\n")
                options.out.flush()
            board.event(_started(demo))
            await _play(demo, options, words, board, report)
    finally:
        await board.aclose()
    report.final_table = board.final_table()
    report.wall_seconds = time.monotonic() - started
    return report


def _started(demo: Demo) -> str:
    if not isinstance(demo, realsystem.RealDemoSystem):
        return EMULATED_UP
    assert demo.cluster is not None
    return (
        f"real control plane up in {demo.cluster.startup_seconds or 0:.1f} s: kube-apiserver, "
        "controller-manager, scheduler; 2 nodes with 2 H100s each, the node agent running "
        f"Pods as processes; operator installed by helm, Ready in {demo.install_seconds or 0:.1f} s"
    )


async def _play(
    demo: Demo,
    options: Options,
    words: speech.Speech,
    board: demo_board.StatusBoard,
    report: Report,
) -> None:
    from avatar_sdk import client as sdk_client
    from avatar_worker.transports.viewer import LocalViewer

    loop = asyncio.get_running_loop()
    board.pod_phase = _pod_phase_of(demo)
    room = demo.open_room(options.room_id)
    viewer = LocalViewer(
        room.join(VIEWER_ID),
        record_to=options.output,
        width=options.width,
        height=options.height,
        fps=options.fps,
        sample_rate=options.sample_rate,
    )
    agent = demo_agent.DemoAgent(
        room, AGENT_ID, sample_rate=options.sample_rate, on_event=board.event
    )
    agent.join()
    board.start()
    sessions = await sdk_client.AvatarSessionClient.from_config(
        system.NAMESPACE, kubeconfig=demo.kubeconfig
    )
    monitor: SessionMonitor | None = None
    try:
        created_at = loop.time()
        session = await sessions.create(
            options.room_id,
            agent_participant_id=AGENT_ID,
            spec={
                "avatar": {"renderer": options.renderer},
                "video": {"width": options.width, "height": options.height, "fps": options.fps},
                "audio": {"sampleRate": options.sample_rate},
                "resources": {"vramMiB": options.vram_mib},
            },
        )
        report.session_name = session.name
        board.event(f"agent created AvatarSession {system.NAMESPACE}/{session.name}")
        monitor = SessionMonitor(sessions, session.name, board, _reporter(demo, options))
        monitor.start()
        try:
            joined = await sessions.wait_until_joined(session.name, timeout=options.join_timeout)
        except sdk_client.AvatarError as exc:
            report.problems.append(f"the session did not join: {exc}")
        else:
            report.time_to_joined_s = loop.time() - created_at
            await _converse(joined, agent, words, options, board, report)
            if options.serve:
                await _stay_open(monitor, board)
        await agent.leave()
        if not await monitor.wait(_finished, END_TIMEOUT_SECONDS):
            report.problems.append(f"the session did not end within {END_TIMEOUT_SECONDS:.0f} s")
        latest = monitor.latest
        if latest is not None:
            status = latest.status
            report.end_phase = status.phase.value if status.phase else None
            report.end_reason = status.end_reason.value if status.end_reason else None
            report.worker_sync_error_ms = status.sync_error_ms
            report.children = {"pod": status.pod_name or "", "secret": status.secret_name or ""}
        report.leaks = await demo.wait_collected(session.name)
        pod_name = report.children.get("pod", "")
        report.worker_exit_code = demo.pod_exits.get(pod_name)
        report.worker_log_tail = "\n".join(demo.worker_log(pod_name).splitlines()[-15:])
        if not report.leaks:
            board.event("pod, secret and GPU reservation are gone")
        await sessions.delete(session.name, uid=session.metadata.get("uid"), wait=True)
        report.session_deleted = demo.session(session.name) is None
        board.event("agent deleted the session")
        if options.warm and not options.serve and report.time_to_joined_s is not None:
            report.warm = await demo_warm.run(demo, options, sessions, board, words, AGENT_ID)
    finally:
        if monitor is not None:
            await monitor.aclose()
        await sessions.aclose()
        with contextlib.suppress(Exception):
            await agent.leave()
        viewer.close()
    _measure(viewer, options, report)
    _check(report)


async def _converse(
    joined: api.AvatarSession,
    agent: demo_agent.DemoAgent,
    words: speech.Speech,
    options: Options,
    board: demo_board.StatusBoard,
    report: Report,
) -> None:
    """The avatar is in the room: a turn the agent barges in on, then a reply to its end."""
    placement = joined.status.placement
    if placement is not None:
        report.placement = f"{placement.node} GPU {placement.gpu} ({placement.vram_mib} MiB)"
    board.event(
        f"worker joined the room after {report.time_to_joined_s:.2f} s "
        f"({report.placement or 'no GPU'})"
    )
    await asyncio.sleep(GREETING_IDLE_SECONDS)
    barge_in = speech.seconds_of(words.first, options.sample_rate) * options.interrupt_fraction
    first = await agent.speak(words.first, interrupt_after=barge_in)
    await asyncio.sleep(BARGE_IN_GAP_SECONDS)
    reply = await agent.speak(words.reply)
    report.turns = [first, reply]
    await asyncio.sleep(AFTER_REPLY_SECONDS)


async def _stay_open(monitor: SessionMonitor, board: demo_board.StatusBoard) -> None:
    """Keep the room (and the agent in it) until Ctrl-C or the session's end: the viewer page
    speaks as the agent meanwhile."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGINT, stop.set)
    board.event("the room stays open for the viewer page; Ctrl-C ends the demo")
    stopped = asyncio.create_task(stop.wait())
    finished = asyncio.create_task(monitor.wait(_finished, float("inf")))
    try:
        await asyncio.wait({stopped, finished}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        loop.remove_signal_handler(signal.SIGINT)
        for task in (stopped, finished):
            task.cancel()
        await asyncio.gather(stopped, finished, return_exceptions=True)


def _reporter(demo: Demo, options: Options) -> Any:
    """The session's status for the viewer page (None without one)."""
    viewer = demo.viewer
    if viewer is None:
        return None

    def report(session: api.AvatarSession) -> None:
        status = session.model_dump(by_alias=True, mode="json").get("status") or {}
        viewer.report(options.room_id, status)

    return report


def _pod_phase_of(demo: Demo) -> Any:
    def phase(name: str) -> str | None:
        pod = demo.pod(name)
        return None if pod is None else (pod.get("status") or {}).get("phase")

    return phase


def _measure(viewer: Any, options: Options, report: Report) -> None:
    log = viewer.log
    report.video_frames = len(log.video)
    report.audio_seconds = measure.received_seconds(log, options.sample_rate)
    report.av_offset = measure.av_offset(log, options.sample_rate)
    if options.output is not None and options.output.exists():
        report.recording = options.output
    if len(report.turns) == 2:
        first, reply = report.turns
        if first.interrupted_at is not None:
            silence = measure.silence_after(
                log, options.sample_rate, first.interrupted_at, reply.started_at
            )
            if silence is not None:
                report.interrupt_to_silence_ms = round(silence * 1000, 1)
            if first.acked_at is not None:
                ack_s = first.acked_at - first.interrupted_at
                report.interrupt_to_ack_ms = round(ack_s * 1000, 1)


def _check(report: Report) -> None:
    problems = report.problems
    if len(report.turns) == 2:
        first, reply = report.turns
        if first.ack is None or not first.ack.interrupted:
            problems.append("the interrupted turn was not acknowledged as interrupted")
        if reply.ack is None or reply.ack.interrupted:
            problems.append("the reply was not acknowledged as played to its end")
    elif report.time_to_joined_s is not None:
        problems.append("the agent did not speak both turns")
    if report.time_to_joined_s is not None:
        if report.end_phase != "Ended" or report.end_reason != "AgentLeft":
            problems.append(
                f"the session ended as {report.end_phase} ({report.end_reason}), "
                "not Ended (AgentLeft)"
            )
        if report.worker_exit_code not in (None, 0):  # None: its Pod went before it exited
            problems.append(f"the worker exited with {report.worker_exit_code}, not 0")
        if not report.session_deleted:
            problems.append("the session was not deleted")
        if report.video_frames == 0 or report.audio_seconds == 0:
            problems.append("the viewer received no video or no audio")
        if report.av_offset is None:
            problems.append("no A/V offset could be measured at the viewer")
    problems.extend(f"left behind: {leak}" for leak in report.leaks)
    if report.warm is not None:
        problems.extend(report.warm.problems)
        problems.extend(f"left behind by the warm session: {leak}" for leak in report.warm.leaks)
