"""The machine's process table, read from /proc: which worker processes a node agent runs, and
whether those seen earlier are still alive (the same pid *and* start time: a pid reused by
another process does not count). Benches and the real-cluster demo count leaked workers so.
"""

from __future__ import annotations

from pathlib import Path

# a worker Pod's process: the operator's default command (`avatar-worker run`, the script of
# this environment) or `python -m avatar_worker`; not the local room's `avatar-worker room`
WORKER_COMMANDS = ("avatar-worker run", "-m avatar_worker")


def table() -> dict[int, tuple[int, str, str]]:
    """pid → (parent pid, start time, command line) of every process now."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        found[int(entry.name)] = (int(fields[1]), fields[19], cmdline)
    return found


def workers_under(root: int) -> dict[int, str]:
    """Worker processes descending from `root`: pid → start time."""
    now = table()
    children: dict[int, list[int]] = {}
    for pid, (parent, _, _) in now.items():
        children.setdefault(parent, []).append(pid)
    workers, stack = {}, [root]
    while stack:
        for child in children.get(stack.pop(), []):
            stack.append(child)
            if any(command in now[child][2] for command in WORKER_COMMANDS):
                workers[child] = now[child][1]
    return workers


def alive(workers: dict[int, str]) -> list[int]:
    """Those of `workers` (pid → start time) still running."""
    now = table()
    return [pid for pid, start in workers.items() if pid in now and now[pid][1] == start]


def workers_of_pod(root: int, pod_name: str) -> list[int]:
    """The worker processes under `root` that run in Pod `pod_name` (by their `HOSTNAME`, as
    the kubelet sets it)."""
    found = []
    for pid in workers_under(root):
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"HOSTNAME={pod_name}".encode() in environ:
            found.append(pid)
    return found
