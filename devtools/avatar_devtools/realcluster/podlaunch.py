"""Starts one container's process as a container runtime would, then becomes it (exec).

The node agent runs `python -I podlaunch.py SPEC.json` with the container's environment; this
joins the Pod's network namespace when the spec names one (`/run/netns/<name>`, as made by `ip
netns`), enters a mount namespace of its own (`unshare(CLONE_NEWNS)`, every mount made private
so nothing propagates back to the host), bind-mounts each volume at its mountPath (read-only
ones remounted `MS_RDONLY`; files such as `/etc/hosts` bound over files), changes to the working
directory and execs the command. The pid stays the container's through the exec, so the agent
signals and waits on the process it started. A mountPath that does not exist on the host is made
there as an empty directory (or file): a mount point needs one, and this machine's processes
share its filesystem; the mount itself is seen only inside the namespace.

The spec, JSON: `argv`, `cwd` (the container's workingDir, a path inside its namespace) or
`host_cwd` (a directory of the host, opened before any mount), `netns` (or null), `namespaces`
(false: no mount namespace, the volumes being where the path rule puts them), `mounts`
[{source, target, readOnly}], `image` (the paths standing for the container's image, this
Python environment and the checkout: one a mount covers, say an emptyDir at `/tmp` over a
checkout under `/tmp`, is bound back on top, read-only), `read_only_root` (the namespace's "/"
remounted read-only after the binds), `user` ({uid, gid, groups}: set last, before the exec),
`error_file` (where a failure before the exec is written; the exit status is then 128). Every
source is opened before the first mount, so a mountPath such as `/tmp` covering the Pod's own
folder hides none of the Pod's other volumes.

Standard library only, and run with `-I`: it must start fast and import nothing of the Pod's
environment (the Pod's `PYTHONPATH` is the command's, not this file's).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import os
import sys
from pathlib import Path
from typing import Any

CLONE_NEWNS = 0x00020000
CLONE_NEWNET = 0x40000000
MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_REMOUNT = 32
MS_BIND = 4096
MS_REC = 16384
MS_PRIVATE = 1 << 18
MNT_DETACH = 2
PR_SET_PDEATHSIG = 1
SIGKILL = 9
LAUNCH_FAILED = 128  # the exit status when the container could not be started

_libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)


class LaunchError(OSError):
    pass


def _check(result: int, what: str) -> None:
    if result != 0:
        errno = ctypes.get_errno()
        raise LaunchError(errno, f"{what}: {os.strerror(errno)}")


def mount(source: str | None, target: str, fstype: str | None, flags: int, data: str = "") -> None:
    _check(
        _libc.mount(
            source.encode() if source is not None else None,
            target.encode(),
            fstype.encode() if fstype is not None else None,
            ctypes.c_ulong(flags),
            data.encode() if data else None,
        ),
        f"mount {source or ''} on {target}",
    )


def umount(target: str) -> None:
    _check(_libc.umount2(target.encode(), MNT_DETACH), f"umount {target}")


def mount_tmpfs(target: str, size_bytes: int | None = None) -> None:
    """A tmpfs at `target` (an emptyDir with `medium: Memory`), in the caller's namespace."""
    options = "mode=0777" + (f",size={size_bytes}" if size_bytes else "")
    mount("tmpfs", target, "tmpfs", MS_NOSUID | MS_NODEV, options)


def join_netns(name: str) -> None:
    """Enters `/run/netns/<name>` (the calling thread only, as setns(2) does)."""
    fd = os.open(f"/run/netns/{name}", os.O_RDONLY)
    try:
        _check(_libc.setns(fd, CLONE_NEWNET), f"setns {name}")
    finally:
        os.close(fd)


def _bind(source: str, target: str, read_only: bool) -> None:
    if not os.path.exists(target):
        if os.path.isdir(source):
            os.makedirs(target, exist_ok=True)
        else:
            os.makedirs(os.path.dirname(target) or "/", exist_ok=True)
            Path(target).touch()
    mount(source, target, None, MS_BIND | MS_REC)
    if read_only:
        mount(None, target, None, MS_BIND | MS_REMOUNT | MS_RDONLY)


def _within(path: str, target: str) -> bool:
    """Whether a mount at `target` covers `path`."""
    return path == target or path.startswith(target.rstrip("/") + "/")


def launch(spec: dict[str, Any]) -> None:
    _libc.prctl(PR_SET_PDEATHSIG, SIGKILL)  # the node agent's processes die with it
    if spec.get("netns"):
        join_netns(str(spec["netns"]))
    if spec.get("namespaces", True):
        _check(_libc.unshare(CLONE_NEWNS), "unshare(CLONE_NEWNS)")
        mount(None, "/", None, MS_REC | MS_PRIVATE)
    # Every source (and the default working directory) is opened before the first bind, in the
    # new namespace (a bind's source must be of the caller's): a mountPath such as /tmp may
    # cover where the Pod's folder lies, and a later source with it. A bind from
    # /proc/self/fd/N mounts what the descriptor names, wherever that is now.
    host_cwd = os.open(spec["host_cwd"], os.O_PATH | os.O_DIRECTORY) if spec.get("host_cwd") else -1
    if spec.get("namespaces", True):
        mounts = sorted(spec.get("mounts") or [], key=lambda m: m["target"].count("/"))
        sources = [os.open(str(m["source"]), os.O_PATH) for m in mounts]
        # the image (this environment, the checkout): what a mount covers is bound back after
        covered = [
            path
            for path in spec.get("image") or []
            if any(_within(path, str(m["target"])) for m in mounts)
        ]
        image = [os.open(path, os.O_PATH | os.O_DIRECTORY) for path in covered]
        if spec.get("netns"):  # /sys as `ip netns exec` remounts it: the Pod's interfaces
            try:
                umount("/sys")
                mount("sysfs", "/sys", "sysfs", 0)
            except LaunchError:
                pass
        for item, fd in zip(mounts, sources, strict=True):
            _bind(f"/proc/self/fd/{fd}", str(item["target"]), bool(item.get("readOnly")))
            os.close(fd)
        for path, fd in zip(covered, image, strict=True):
            _bind(f"/proc/self/fd/{fd}", path, read_only=True)
            os.close(fd)
    if spec.get("namespaces", True) and spec.get("read_only_root"):
        # readOnlyRootFilesystem: this namespace's "/" read-only; the volumes bound above are
        # mounts of their own and stay as they are
        mount(None, "/", None, MS_BIND | MS_REMOUNT | MS_RDONLY)
    if spec.get("cwd"):  # the container's workingDir, inside its namespace
        os.makedirs(spec["cwd"], exist_ok=True)
        os.chdir(spec["cwd"])
    elif host_cwd >= 0:
        os.fchdir(host_cwd)
    else:
        os.chdir("/")
    if host_cwd >= 0:
        os.close(host_cwd)
    user = spec.get("user") or {}
    if user:  # runAsUser, runAsGroup, fsGroup and supplementalGroups, last of all
        os.setgroups([int(g) for g in user.get("groups") or []])
        os.setgid(int(user.get("gid") or 0))
        os.setuid(int(user["uid"]))
    argv = [str(a) for a in spec["argv"]]
    os.execvp(argv[0], argv)


def main() -> None:
    spec = json.loads(Path(sys.argv[1]).read_text())
    # opened now, while it may be: after setuid the Pod's folder may not be writable
    error_file = open(spec["error_file"], "w") if spec.get("error_file") else None  # noqa: SIM115
    try:
        launch(spec)
    except (OSError, KeyError, IndexError, ValueError) as error:
        message = f"failed to start container: {error}"
        if error_file is not None:
            error_file.write(message)
            error_file.close()
        sys.stderr.write(message + "\n")
        sys.exit(LAUNCH_FAILED)


if __name__ == "__main__":
    main()
