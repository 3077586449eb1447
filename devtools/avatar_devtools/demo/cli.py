"""`python -m avatar_devtools.demo`: the command line of the whole-system demo.

Exit status: 0 when the session went from create to Joined to Ended (AgentLeft), both turns
were acknowledged as they should be, the viewer received audio and video, and nothing was left
behind; 1 otherwise (each problem is printed); 2 for bad arguments or unreadable audio.
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import logging
import shutil
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

from avatar_devtools.demo import realsystem, scenario
from avatar_devtools.demo import warm as demo_warm
from avatar_devtools.realcluster.binaries import BinariesUnavailable
from avatar_devtools.realcluster.cluster import ClusterError, KubectlError

DEFAULT_SERVE_PORT = 8765  # as `avatar-worker room`: the page's address stays the same
HEADER = (
    "avatar-operator demo: emulated Kubernetes API + the operator + worker Pods run as "
    "local processes + a local room + an agent\n\n"
)
HEADER_REAL = (
    "avatar-operator demo: a real Kubernetes control plane (v1.37) + the chart's operator Pod "
    "+ worker Pods run as processes in their own namespaces + a local room + an agent\n\n"
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m avatar_devtools.demo",
        description="The whole system on this machine: emulated Kubernetes API, the operator, "
        "worker Pods as local processes, a local room, and an agent that talks to its avatar.",
    )
    parser.add_argument(
        "--audio", type=Path, help="the agent's first turn (any WAV; default: espeak-ng)"
    )
    parser.add_argument("--out", type=Path, default=Path("demo.mp4"), help="the viewer's MP4")
    parser.add_argument(
        "--renderer", default="portrait", help="portrait (default), waveform, model, pkg.mod:Cls"
    )
    parser.add_argument("--size", type=int, default=512, help="video width and height")
    parser.add_argument("--fps", type=int, default=30)
    parser.add_argument("--duration", type=float, help="cap each turn's audio at this many seconds")
    parser.add_argument("--room", default="demo-room", help="the room id")
    parser.add_argument(
        "--no-live",
        action="store_true",
        help="one line per change instead of a table redrawn in place (default off a terminal)",
    )
    parser.add_argument(
        "--serve",
        action="store_true",
        help="serve the viewer page (prints its address) and keep the room open until Ctrl-C",
    )
    parser.add_argument(
        "--port", type=int, help="the room server's port (with --serve: 8765; else any free)"
    )
    parser.add_argument(
        "--real-cluster",
        action="store_true",
        help="a real control plane (kube-apiserver, scheduler, controller-manager built from "
        "Kubernetes' Go modules; needs Go or `make kube-binaries`, and root for the Pods' "
        "namespaces) with the operator installed by helm, instead of the emulated API",
    )
    parser.add_argument(
        "--no-warm",
        action="store_true",
        help="skip the second, warm session (an AvatarPool's prepared worker)",
    )
    parser.add_argument("--workdir", type=Path, help="keep the run's files here (default: temp)")
    parser.add_argument("-v", "--verbose", action="store_true", help="the components' logs")
    return parser


def main(argv: Sequence[str] | None = None, out: TextIO | None = None) -> int:
    args = build_parser().parse_args(argv)
    out = out or sys.stdout
    if args.audio is not None and not args.audio.is_file():
        sys.stderr.write(f"demo: no such audio file: {args.audio}\n")
        return 2
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.ERROR,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if args.real_cluster and (reason := realsystem.unavailable_reason()) is not None:
        sys.stderr.write(f"demo: --real-cluster cannot run here: {reason}\n")
        return 2
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="avatar-demo-"))
    options = scenario.Options(
        workdir=workdir,
        output=args.out,
        audio=args.audio,
        renderer=args.renderer,
        width=args.size,
        height=args.size,
        fps=args.fps,
        max_turn_seconds=args.duration,
        room_id=args.room,
        live=not args.no_live and out.isatty(),
        serve=args.serve,
        port=args.port if args.port is not None else (DEFAULT_SERVE_PORT if args.serve else 0),
        out=out,
        real_cluster=args.real_cluster,
        warm=not args.no_warm,
    )
    out.write(HEADER_REAL if args.real_cluster else HEADER)
    out.flush()
    try:
        report = asyncio.run(scenario.run(options))
    except ValueError as exc:  # unreadable audio (avatar_worker.offline.AudioFileError)
        sys.stderr.write(f"demo: {exc}\n")
        return 2
    except (ClusterError, KubectlError, BinariesUnavailable) as exc:  # --real-cluster
        sys.stderr.write(f"demo: the real control plane: {exc}\n")
        return 1
    except OSError as exc:
        if exc.errno != errno.EADDRINUSE or not options.port:
            raise
        sys.stderr.write(f"demo: port {options.port} is in use; choose another with --port\n")
        return 2
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    out.write(summary(report, options))
    out.flush()
    return 0 if report.ok else 1


def summary(report: scenario.Report, options: scenario.Options) -> str:
    """The figures and checks printed at the end."""
    lines = ["", f"audio: {report.speech_source}"]
    if not options.live:
        lines += ["final state:", *(f"  {line}" for line in report.final_table)]
    lines.append("")
    lines.append("measured:")
    if report.time_to_joined_s is not None:
        lines.append(
            f"  time to joined      {report.time_to_joined_s:6.2f} s   create -> status Joined "
            f"(worker process started, in the room, publishing) on {report.placement}"
        )
    warm = report.warm
    if warm is not None and warm.time_to_joined_s is not None:
        lines.append(
            f"  warm join           {warm.time_to_joined_s:6.2f} s   create -> status Joined on "
            f"{warm.pod_name}, a warm worker of AvatarPool {demo_warm.POOL_NAME} (its renderer "
            f"prepared {warm.pool_ready_s or 0:.2f} s after the pool was created)"
        )
        if report.time_to_joined_s:
            ratio = report.time_to_joined_s / max(warm.time_to_joined_s, 1e-3)
            lines.append(f"                      {ratio:6.1f} x faster than the cold join")
    if report.av_offset is not None:
        offset = report.av_offset
        sync = report.worker_sync_error_ms
        lines.append(
            f"  A/V offset          {offset.median_ms:+6.1f} ms  median at the viewer, "
            f"|p95| {offset.p95_abs_ms:.1f} ms over {offset.frames} frames"
            + (f" (worker's own syncErrorMs {sync:+.1f})" if sync is not None else "")
        )
    if report.interrupt_to_silence_ms is not None:
        lines.append(
            f"  interrupt latency   {report.interrupt_to_silence_ms:6.1f} ms  INTERRUPT sent -> "
            "the viewer's audio silent"
            + (
                f"; {report.interrupt_to_ack_ms:.1f} ms to the stream_ended ack"
                if report.interrupt_to_ack_ms is not None
                else ""
            )
        )
    for index, turn in enumerate(report.turns, 1):
        if turn.ack is not None:
            lines.append(
                f"  turn {index}              {turn.seconds:6.2f} s of speech, played "
                f"{turn.ack.playback_position:.2f} s, interrupted "
                f"{str(turn.ack.interrupted).lower()}"
            )
    if report.recording is not None:
        lines.append(
            f"  viewer received     {report.audio_seconds:6.2f} s of audio, "
            f"{report.video_frames} video frames -> {report.recording} (H.264 + AAC)"
        )
    if report.time_to_joined_s is not None:
        lines.append("")
        lines.append("after the agent left the room:")
        lines.append(
            f"  session   {report.session_name}: {report.end_phase} ({report.end_reason}), "
            + ("then deleted by the agent" if report.session_deleted else "NOT deleted")
        )
        leaked = " ".join(report.leaks)
        pod, secret = report.children.get("pod", ""), report.children.get("secret", "")
        exit_code = report.worker_exit_code
        lines.append(
            f"  pod       {pod}: "
            + ("LEFT BEHIND" if "pod" in leaked else "gone")
            + (f" (worker exited {exit_code})" if exit_code is not None else "")
        )
        lines.append(f"  secret    {secret}: " + ("LEFT BEHIND" if "secret" in leaked else "gone"))
        lines.append(
            f"  GPU       {report.placement}: "
            + ("STILL RESERVED" if "reservation" in leaked else "released")
        )
    lines.append("")
    if report.ok:
        lines.append(f"demo ok in {report.wall_seconds:.1f} s")
    else:
        lines += [f"demo FAILED: {problem}" for problem in report.problems]
        if report.worker_log_tail:
            lines += ["the worker's last log lines:", report.worker_log_tail]
    return "\n".join(lines) + "\n"
