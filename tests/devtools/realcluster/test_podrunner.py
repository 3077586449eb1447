"""The pod runner without a cluster: a fake API (what a node's credentials would fetch) and the
host's network, so these run wherever Python does. With root the containers get their own
mount namespace; without it, the path rule (and the agent says so)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime
import os
import socket
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from avatar_devtools.localcluster import fleet, podstatus
from avatar_devtools.realcluster import podrunner

NS = "apps"


class FakeApi:
    """Answers GETs of Secrets and ConfigMaps, and TokenRequests, as the API server would."""

    def __init__(self, objects: dict[str, dict[str, Any]]) -> None:
        self.objects = objects
        self.token_requests: list[dict[str, Any]] = []
        self.events: list[dict[str, Any]] = []
        self.token_ttl_s: float | None = None  # set: tokens numbered, expiring this soon

    async def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        content_type: str = "application/json",
        params: dict[str, str] | None = None,
        ok: tuple[int, ...] = (200, 201),
    ) -> Any:
        if method == "POST" and path.endswith("/events"):
            self.events.append(body)
            return body
        if method == "POST" and path.endswith("/token"):
            self.token_requests.append(body)
            status: dict[str, Any] = {"token": "bound-token"}
            if self.token_ttl_s is not None:
                expires = datetime.datetime.now(datetime.UTC) + datetime.timedelta(
                    seconds=self.token_ttl_s
                )
                status = {
                    "token": f"token-{len(self.token_requests)}",
                    "expirationTimestamp": expires.strftime("%Y-%m-%dT%H:%M:%SZ"),
                }
            return {"status": status}
        if path in self.objects:
            return self.objects[path]
        raise podrunner.APIError(404, {"message": f"{path} not found"})


def _secret(**data: str) -> dict[str, Any]:
    return {"data": {k: base64.b64encode(v.encode()).decode() for k, v in data.items()}}


def _pod(name: str, script: str, **spec: Any) -> dict[str, Any]:
    container = {"name": "main", "image": "python", "command": ["python", "-c", script]}
    container.update(spec.pop("container", {}))
    return {
        "metadata": {"name": name, "namespace": NS, "uid": f"uid-{name}"},
        "spec": {
            "nodeName": "n-0",
            "restartPolicy": "Never",
            "containers": [container],
            **spec,
        },
    }


class Harness:
    def __init__(self, tmp_path: Path, api: FakeApi, namespaces: bool) -> None:
        self.tmp_path = tmp_path
        self.api = api
        self.namespaces = namespaces
        self.reports = 0

    def runner(self, pod: dict[str, Any]) -> podrunner.ProcessPod:
        run = podstatus.PodRun(
            uid=pod["metadata"]["uid"],
            mode="process",
            node="n-0",
            pod_ip="",
            containers={
                c["name"]: podstatus.ContainerRun(name=c["name"], image=c["image"])
                for c in pod["spec"]["containers"]
            },
        )

        async def report() -> None:
            self.reports += 1

        return podrunner.ProcessPod(
            pod,
            run,
            api=self.api,
            config=fleet.KubeletConfig(mode="process"),
            network=podrunner.HostNetwork("127.0.0.1", "127.0.0.1", 6443),
            directory=self.tmp_path / pod["metadata"]["name"],
            report=report,
            namespaces=self.namespaces,
        )


@pytest.fixture
def mount_point() -> Iterator[str]:
    """A mountPath the launcher makes on the host (an empty directory), removed afterwards."""
    path = f"/mnt/podrunner-test-{os.getpid()}"
    yield path
    for folder, _dirs, _files in os.walk(path, topdown=False):  # empty directories only
        with contextlib.suppress(OSError):
            os.rmdir(folder)


def _modes() -> list[Any]:
    root = pytest.mark.skipif(
        not podrunner.mount_namespaces_permitted(), reason="mount namespaces need root"
    )
    return [pytest.param(True, id="namespaces", marks=root), pytest.param(False, id="path-rule")]


async def _until(check: Any, within: float = 20.0) -> None:
    deadline = time.monotonic() + within
    while not check():
        assert time.monotonic() < deadline, "not in time"
        await asyncio.sleep(0.05)


def _alive(pid: int) -> bool:
    return _exists(f"/proc/{pid}")


def _exists(path: str) -> bool:
    return os.path.exists(path)


def _log(runner: podrunner.ProcessPod, restart: int = 0) -> str:
    return podrunner.log_file(runner.directory, "main", restart).read_text()


@pytest.mark.parametrize("namespaces", _modes())
async def test_env_secret_volume_and_bound_token(
    tmp_path: Path, namespaces: bool, mount_point: str
) -> None:
    mount = mount_point if namespaces else "/etc/app"
    api = FakeApi({f"/api/v1/namespaces/{NS}/secrets/app": _secret(greeting="hi")})
    script = textwrap.dedent(
        """
        import os
        root = os.environ.get("AVATAR_POD_ROOT", "")
        print(os.environ["GREETING"], open(os.environ["FILE"]).read(),
              open(root + "/var/run/secrets/kubernetes.io/serviceaccount/token").read(),
              os.environ["KUBERNETES_SERVICE_HOST"], os.environ["KUBERNETES_SERVICE_PORT"])
        """
    )
    pod = _pod(
        "reader",
        script,
        container={
            "env": [
                {
                    "name": "GREETING",
                    "valueFrom": {"secretKeyRef": {"name": "app", "key": "greeting"}},
                },
                {"name": "FILE", "value": f"{mount}/greeting"},
            ],
            "volumeMounts": [
                {"name": "app", "mountPath": mount},
                {"name": "sa", "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount"},
            ],
        },
        volumes=[
            {"name": "app", "secret": {"secretName": "app"}},
            {
                "name": "sa",
                "projected": {
                    "sources": [
                        {"serviceAccountToken": {"audience": "vault", "expirationSeconds": 600}}
                    ]
                },
            },
        ],
    )
    runner = Harness(tmp_path, api, namespaces).runner(pod)
    await runner.start()
    await _until(lambda: runner.run.containers["main"].exit_code is not None)
    assert runner.run.containers["main"].exit_code == 0, _log(runner)
    assert _log(runner).splitlines()[-1] == "hi hi bound-token 127.0.0.1 6443"
    request = api.token_requests[0]["spec"]
    assert (request["audiences"], request["expirationSeconds"]) == (["vault"], 600)
    assert request["boundObjectRef"] == {
        "apiVersion": "v1",
        "kind": "Pod",
        "name": "reader",
        "uid": "uid-reader",
    }
    await runner.stop(0.0)


async def test_on_failure_restarts_and_keeps_the_last_state(tmp_path: Path) -> None:
    script = "import sys, time; time.sleep(0.05); sys.exit(4)"
    pod = _pod("crashes", script, restartPolicy="OnFailure")
    runner = Harness(tmp_path, FakeApi({}), False).runner(pod)
    await runner.start()
    state = runner.run.containers["main"]
    await _until(lambda: state.restart_count >= 2)
    assert state.last_state["terminated"]["exitCode"] == 4
    assert state.last_state["terminated"]["reason"] == "Error"
    await runner.stop(0.0)
    assert runner.pids() == []


async def test_stop_terms_then_kills_after_the_grace(tmp_path: Path) -> None:
    script = textwrap.dedent(
        """
        import signal, time
        signal.signal(signal.SIGTERM, lambda *_: print("term", flush=True))
        print("up", flush=True)
        while True:
            time.sleep(0.05)
        """
    )
    api = FakeApi({})
    runner = Harness(tmp_path, api, False).runner(_pod("stubborn", script))
    await runner.start()
    await _until(lambda: "up" in _log(runner))
    pid = runner.pids()[0]
    began = time.monotonic()
    await runner.stop(1.0)
    took = time.monotonic() - began
    await _until(lambda: len(api.events) >= 2)  # sent in the background
    reasons = [(e["reason"], e["involvedObject"].get("fieldPath")) for e in api.events]
    assert reasons == [("Started", "spec.containers{main}"), ("Killing", "spec.containers{main}")]
    assert 1.0 <= took < 3.0
    assert not _alive(pid)
    state = runner.run.containers["main"]
    assert (state.exit_code, state.reason) == (137, "Error")  # SIGKILLed: 128 + 9
    assert "term" in _log(runner)


async def test_a_tcp_readiness_probe_makes_the_container_ready(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    script = textwrap.dedent(
        f"""
        import socket, time
        time.sleep(0.5)
        server = socket.create_server(("127.0.0.1", {port}))
        while True:
            server.accept()[0].close()
        """
    )
    probe = {"tcpSocket": {"port": port}, "periodSeconds": 0.2, "failureThreshold": 1}
    pod = _pod("listens", script, container={"readinessProbe": probe})
    runner = Harness(tmp_path, FakeApi({}), False).runner(pod)
    await runner.start()
    state = runner.run.containers["main"]
    assert state.ready is False
    await _until(lambda: state.ready is True)
    await runner.stop(0.0)


async def test_a_missing_command_cannot_run(tmp_path: Path) -> None:
    pod = _pod("nothing", "")
    pod["spec"]["containers"][0] = {"name": "main", "image": "unknown-image"}
    runner = Harness(tmp_path, FakeApi({}), False).runner(pod)
    await runner.start()
    state = runner.run.containers["main"]
    assert (state.exit_code, state.reason) == (128, "ContainerCannotRun")
    assert "no entry in the kubelet's images" in state.message


async def test_a_startup_probe_holds_readiness_until_it_passes(tmp_path: Path) -> None:
    marker = tmp_path / "started"
    script = textwrap.dedent(
        f"""
        import pathlib, time
        time.sleep(0.6)
        pathlib.Path({str(marker)!r}).touch()
        time.sleep(600)
        """
    )
    startup = {
        "exec": {"command": ["test", "-f", str(marker)]},
        "periodSeconds": 0.2,
        "failureThreshold": 50,
    }
    readiness = {"exec": {"command": ["true"]}, "periodSeconds": 0.2}
    pod = _pod("slow", script, container={"startupProbe": startup, "readinessProbe": readiness})
    runner = Harness(tmp_path, FakeApi({}), False).runner(pod)
    await runner.start()
    state = runner.run.containers["main"]
    assert (state.started, state.ready) == (False, False)
    await _until(lambda: state.started is True and state.ready is True)
    await runner.stop(0.0)


async def test_a_failure_says_the_logs_tail_with_fallback_to_logs(tmp_path: Path) -> None:
    script = "import sys; print('loading'); print('model not found', file=sys.stderr); sys.exit(2)"
    pod = _pod("fails", script, container={"terminationMessagePolicy": "FallbackToLogsOnError"})
    runner = Harness(tmp_path, FakeApi({}), False).runner(pod)
    await runner.start()
    state = runner.run.containers["main"]
    await _until(lambda: state.exit_code is not None)
    assert (state.exit_code, state.reason) == (2, "Error")
    assert state.message.splitlines()[-2:] == ["loading", "model not found"]
    terminated = podstatus.terminated(state)
    assert terminated["message"] == state.message


@pytest.mark.skipif(not podrunner.mount_namespaces_permitted(), reason="mount namespaces need root")
async def test_an_emptydir_over_tmp_hides_none_of_the_pods_volumes(
    tmp_path: Path, mount_point: str
) -> None:
    # the Pod's folder is under /tmp here, as the worker's and the operator's `/tmp` emptyDir
    # would cover it: the other volumes are opened before the first mount
    assert str(tmp_path).startswith("/tmp/")
    api = FakeApi({f"/api/v1/namespaces/{NS}/secrets/app": _secret(greeting="still here")})
    mount = mount_point
    # a checkout under /tmp (as CI's may be) is the image: bound back over the emptyDir
    image = sorted({Path(p).parts[2] for p in podrunner.image_paths() if p.startswith("/tmp/")})
    script = textwrap.dedent(
        f"""
        import os
        open("/tmp/scratch", "w").write("x")
        print(open("{mount}/greeting").read(), sorted(set(os.listdir("/tmp")) - set({image!r})))
        """
    )
    pod = _pod(
        "tmp",
        script,
        container={
            "volumeMounts": [
                {"name": "tmp", "mountPath": "/tmp"},
                {"name": "app", "mountPath": mount},
            ]
        },
        volumes=[{"name": "tmp", "emptyDir": {}}, {"name": "app", "secret": {"secretName": "app"}}],
    )
    runner = Harness(tmp_path, api, True).runner(pod)
    await runner.start()
    state = runner.run.containers["main"]
    await _until(lambda: state.exit_code is not None)
    assert state.exit_code == 0, _log(runner)
    assert _log(runner).splitlines()[-1] == "still here ['scratch']"
    assert (runner.volumes["tmp"] / "scratch").read_text() == "x"
    await runner.stop(0.0)


SYSTEM_PYTHON = "/usr/bin/python3"  # readable by any user, unlike an environment under /root


@pytest.mark.skipif(not podrunner.mount_namespaces_permitted(), reason="mount namespaces need root")
@pytest.mark.skipif(not os.path.exists(SYSTEM_PYTHON), reason=f"no {SYSTEM_PYTHON}")
async def test_the_security_context_sets_users_groups_and_a_read_only_root(
    tmp_path: Path, mount_point: str
) -> None:
    api = FakeApi({f"/api/v1/namespaces/{NS}/secrets/token": _secret(token="t0k3n")})
    nonroot = textwrap.dedent(
        f"""
        import os
        open("{mount_point}/scratch/note", "w").write("x")
        token = open("{mount_point}/token/token").read()
        print(os.getuid(), os.getgid(), sorted(os.getgroups()), token)
        """
    )
    read_only = textwrap.dedent(
        """
        try:
            open("/podrunner-read-only-root", "w")
        except OSError as error:
            print(error.strerror)
        """
    )
    mounts = [
        {"name": "scratch", "mountPath": f"{mount_point}/scratch"},
        {"name": "token", "mountPath": f"{mount_point}/token"},
    ]
    pod = _pod(
        "secure",
        nonroot,
        container={"volumeMounts": mounts, "command": [SYSTEM_PYTHON, "-c", nonroot]},
        securityContext={"runAsUser": 10001, "runAsGroup": 10001, "fsGroup": 10002},
        volumes=[
            {"name": "scratch", "emptyDir": {}},
            {"name": "token", "secret": {"secretName": "token", "defaultMode": 0o440}},
        ],
    )
    pod["spec"]["containers"].append(
        {
            "name": "rootro",
            "image": "python",
            "command": ["python", "-c", read_only],
            "securityContext": {"runAsUser": 0, "readOnlyRootFilesystem": True},
        }
    )
    runner = Harness(tmp_path, api, True).runner(pod)
    await runner.start()
    states = runner.run.containers
    await _until(lambda: all(s.exit_code is not None for s in states.values()))
    assert _log(runner).splitlines()[-1] == "10001 10001 [10002] t0k3n", _log(runner)
    ro_log = podrunner.log_file(runner.directory, "rootro", 0).read_text()
    assert ro_log.splitlines()[-1] == "Read-only file system"
    assert not _exists("/podrunner-read-only-root")
    await runner.stop(0.0)


async def test_run_as_non_root_without_a_user_is_refused(tmp_path: Path) -> None:
    pod = _pod("rootish", "print('never')", securityContext={"runAsNonRoot": True})
    runner = Harness(tmp_path, FakeApi({}), True).runner(pod)
    starting = asyncio.ensure_future(runner.start())
    await _until(lambda: runner.run.waiting is not None)
    reason, message = runner.run.waiting or ("", "")
    assert reason == "CreateContainerConfigError"
    assert "runAsNonRoot and image will run as root" in message
    await runner.stop(0.0)
    await starting


async def test_a_projected_token_is_renewed_before_it_expires(tmp_path: Path) -> None:
    api = FakeApi({})
    api.token_ttl_s = 2.0  # renewed after 80%: 1.6 s (the timestamp has whole seconds)
    token_volume = {
        "name": "sa",
        "projected": {"sources": [{"serviceAccountToken": {"expirationSeconds": 600}}]},
    }
    pod = _pod("renews", "import time; time.sleep(600)", volumes=[token_volume])
    runner = Harness(tmp_path, api, False).runner(pod)
    await runner.start()
    token = runner.volumes["sa"] / "token"
    assert _read(token) == "token-1"
    await _until(lambda: _read(token) == "token-2", within=10)
    await runner.stop(0.0)


def _read(path: Path) -> str:
    return path.read_text()


class FlakyNetwork(podrunner.HostNetwork):
    """Fails its first attach, as a network being set up might."""

    def __init__(self) -> None:
        super().__init__("127.0.0.1", "127.0.0.1", 6443, asked=True)
        self.attempts = 0
        self.detached = 0

    async def attach(self, pod: dict[str, Any]) -> podrunner.PodAddress:
        self.attempts += 1
        if self.attempts == 1:
            raise RuntimeError("no bridge yet")
        return await super().attach(pod)

    async def detach(self, pod: dict[str, Any]) -> None:
        self.detached += 1


async def test_a_network_that_fails_is_tried_again_and_said(tmp_path: Path) -> None:
    api = FakeApi({})
    network = FlakyNetwork()
    pod = _pod("netless", "print('up')")
    run = podstatus.PodRun(
        uid="uid-netless",
        mode="process",
        node="n-0",
        pod_ip="",
        containers={"main": podstatus.ContainerRun(name="main", image="python")},
    )

    async def report() -> None:
        return None

    runner = podrunner.ProcessPod(
        pod,
        run,
        api=api,
        config=fleet.KubeletConfig(mode="process"),
        network=network,
        directory=tmp_path / "netless",
        report=report,
        namespaces=False,
    )
    await runner.start()
    state = run.containers["main"]
    await _until(lambda: state.exit_code == 0)
    assert network.attempts == 2
    await _until(lambda: network.detached == 1)  # the Pod done: its network released
    assert [e["reason"] for e in api.events][:1] == ["FailedCreatePodSandBox"]


async def test_fail_and_complete_on_command(tmp_path: Path) -> None:
    harness = Harness(tmp_path, FakeApi({}), False)
    sleeper = "import time; print('up', flush=True); time.sleep(600)"
    failing = harness.runner(_pod("failing", sleeper, restartPolicy="Always"))
    completing = harness.runner(_pod("completing", sleeper, restartPolicy="OnFailure"))
    for runner in (failing, completing):
        await runner.start()
        await _until(lambda runner=runner: "up" in _log(runner))
    pids = failing.pids() + completing.pids()
    await failing.fail("NodeLost", "the node went away", 137)
    state = failing.run.containers["main"]
    assert failing.run.failed == ("NodeLost", "the node went away")
    assert (state.exit_code, state.reason) == (137, "NodeLost")
    await completing.complete(0)  # exit 0 under OnFailure: no restart
    done = completing.run.containers["main"]
    await _until(lambda: done.exit_code == 0)
    assert (done.reason, done.restart_count) == ("Completed", 0)
    await _until(lambda: not any(_alive(pid) for pid in pids))
    await completing.stop(0.0)


@pytest.mark.skipif(not podrunner.mount_namespaces_permitted(), reason="mount namespaces need root")
async def test_an_emptydir_over_the_image_leaves_the_image_in_place(tmp_path: Path) -> None:
    """A mountPath that covers this Python environment or the checkout (the image, here: an
    emptyDir at `/tmp` over a checkout under `/tmp`, as in CI) does not stop the command: the
    launcher binds the image back over the emptyDir, read-only."""
    image = podrunner.image_paths()
    cover = str(Path(image[0]).parent)
    if cover == "/":
        pytest.skip("the image lies at the top of the filesystem: nothing to cover it with")
    script = textwrap.dedent(
        f"""
        import os
        open("{cover}/scratch", "w").write("x")
        print(sorted(os.listdir("{cover}")), os.access("{image[0]}", os.W_OK))
        """
    )
    pod = _pod(
        "cover",
        script,
        container={"volumeMounts": [{"name": "scratch", "mountPath": cover}]},
        volumes=[{"name": "scratch", "emptyDir": {}}],
    )
    runner = Harness(tmp_path, FakeApi({}), True).runner(pod)
    await runner.start()
    state = runner.run.containers["main"]
    await _until(lambda: state.exit_code is not None)
    assert state.exit_code == 0, _log(runner)
    covered = sorted({Path(p).name for p in image if str(Path(p).parent) == cover} | {"scratch"})
    assert _log(runner).splitlines()[-1] == f"{covered} False"  # the image, read-only
    await runner.stop(0.0)
