"""The agent's TTS for the demo: espeak-ng on the fly, or `examples/hello.wav` without it.

Two turns: a longer one that the agent interrupts, and a short reply. Any WAV can replace the
first (`--audio`); without espeak-ng the reply is the first seconds of the same audio.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import NamedTuple

FIRST_TURN = (
    "Hello! I am your avatar. My lips follow my voice, and I stop the moment you "
    "interrupt me, like right about now, so you never have to wait for me to finish."
)
REPLY = "Sure. Go ahead, I am listening."
FALLBACK_WAV = Path(__file__).resolve().parents[3] / "examples" / "hello.wav"
REPLY_FALLBACK_SECONDS = 2.0
BYTES_PER_SAMPLE = 2  # s16le mono


class Speech(NamedTuple):
    first: bytes  # s16le mono PCM at the session's rate
    reply: bytes
    source: str  # what it came from, for the output


def espeak(text: str, out: Path) -> Path | None:
    """`espeak-ng -w out text`; None when espeak-ng is missing or fails."""
    binary = shutil.which("espeak-ng")
    if binary is None:
        return None
    try:
        subprocess.run([binary, "-w", str(out), text], check=True, capture_output=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return out if out.exists() and out.stat().st_size > 44 else None


def prepare(
    workdir: Path,
    *,
    sample_rate: int,
    audio: Path | None = None,
    max_seconds: float | None = None,
) -> Speech:
    """The two turns' audio, decoded and resampled to `sample_rate`, each capped at
    `max_seconds`. Raises `avatar_worker.offline.AudioFileError` on audio it cannot read."""
    from avatar_worker import offline

    def load(path: Path) -> bytes:
        return _cap(offline.read_audio(path, sample_rate, 1), sample_rate, max_seconds)

    workdir.mkdir(parents=True, exist_ok=True)
    reply_wav = espeak(REPLY, workdir / "reply.wav")
    if audio is not None:
        first = load(audio)
        source = str(audio)
    elif (first_wav := espeak(FIRST_TURN, workdir / "first.wav")) is not None:
        first = load(first_wav)
        source = "espeak-ng, made on the fly"
    else:
        first = load(FALLBACK_WAV)
        source = f"{FALLBACK_WAV.name} (espeak-ng is not installed)"
    if reply_wav is not None:
        reply = load(reply_wav)
    else:
        reply = _cap(first, sample_rate, REPLY_FALLBACK_SECONDS)
    return Speech(first, reply, source)


def _cap(pcm: bytes, sample_rate: int, seconds: float | None) -> bytes:
    if seconds is None:
        return pcm
    return pcm[: int(seconds * sample_rate) * BYTES_PER_SAMPLE]


def seconds_of(pcm: bytes, sample_rate: int) -> float:
    return len(pcm) / BYTES_PER_SAMPLE / sample_rate
