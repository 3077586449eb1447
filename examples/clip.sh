#!/usr/bin/env bash
# Makes examples/clip.mp4: the built-in portrait saying one espeak-ng sentence, rendered by
# `avatar-worker render` on the CPU (seed 0), as examples/README.md shows. Run from the
# repository root after `make install`; needs espeak-ng (apt-get install espeak-ng).
set -euo pipefail
worker="${AVATAR_WORKER:-.venv/bin/avatar-worker}"
wav="$(mktemp --suffix=.wav)"
trap 'rm -f "$wav"' EXIT
espeak-ng -w "$wav" "Hello! I am the avatar operator's default face. I blink, I breathe, and my lips follow what I say."
"$worker" render --audio "$wav" --out examples/clip.mp4 --device cpu --seed 0
