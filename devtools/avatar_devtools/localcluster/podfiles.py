"""How the simulated kubelet turns a Pod's spec into a local process: its command line, its
environment (`value`, `valueFrom` Secret/ConfigMap keys and the downward API, `envFrom`,
`$(VAR)` expansion) and its volumes on disk (Secret, ConfigMap, emptyDir, projected with the
ServiceAccount token, PVC, hostPath), by the path rule the kubelet's docstring states."""

from __future__ import annotations

import base64
import os
import shutil
from pathlib import Path
from typing import Any

from avatar_devtools.localcluster import fleet, kubeconfig, podstatus, resources, store

SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
POD_ROOT_ENV = "AVATAR_POD_ROOT"


class PodSetupError(Exception):
    """A pod cannot start yet (a missing Secret, say); it stays Pending with this reason."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


class PodFiles:
    """A Pod's command, environment and volumes, read from the store."""

    def __init__(
        self,
        the_store: store.Store,
        config: fleet.KubeletConfig,
        api_url: str | None,
        workdir: Path,
    ) -> None:
        self.store = the_store
        self.config = config
        self.api_url = api_url
        self.workdir = workdir

    def argv(self, spec: dict[str, Any], env: dict[str, str]) -> list[str]:
        command = list(spec.get("command") or [])
        args = list(spec.get("args") or [])
        if not command:
            command = list(self._image_command(str(spec.get("image", ""))))
            if not command:
                return []
        return [_expand(word, env) for word in command + args]

    def _image_command(self, image: str) -> tuple[str, ...]:
        images = self.config.images
        if image in images:
            return images[image]
        bare = image.rsplit("@", 1)[0]
        repository = bare.rsplit(":", 1)[0] if ":" in bare.rsplit("/", 1)[-1] else bare
        for candidate in (repository, repository.rsplit("/", 1)[-1]):
            if candidate in images:
                return images[candidate]
        return ()

    def environment(
        self, pod: dict[str, Any], spec: dict[str, Any], run: podstatus.PodRun
    ) -> dict[str, str]:
        base, own = self.environment_parts(pod, spec, run)
        return {**base, **own}

    def environment_parts(
        self, pod: dict[str, Any], spec: dict[str, Any], run: podstatus.PodRun
    ) -> tuple[dict[str, str], dict[str, str]]:
        """The kubelet's environment (inherited, plus what it sets), and the container's own."""
        namespace = pod["metadata"]["namespace"]
        env = {k: v for k, v in os.environ.items() if not k.startswith("KUBERNETES_SERVICE")}
        env["HOSTNAME"] = pod["metadata"]["name"]
        if run.directory is not None:
            env[POD_ROOT_ENV] = str(run.directory / "root")
            if self.api_url:
                env["KUBECONFIG"] = str(run.directory / "kubeconfig")
        own: dict[str, str] = {}
        for source in spec.get("envFrom") or []:
            prefix = source.get("prefix", "")
            if "secretRef" in source:
                data = self._secret_data(namespace, source["secretRef"])
                own.update({prefix + k: v.decode(errors="replace") for k, v in data.items()})
            elif "configMapRef" in source:
                data = self._configmap_data(namespace, source["configMapRef"])
                own.update({prefix + k: v.decode(errors="replace") for k, v in data.items()})
        for item in spec.get("env") or []:
            name = item["name"]
            if "valueFrom" in item:
                value = self._env_value(pod, item["valueFrom"], run)
                if value is not None:
                    own[name] = value
            else:
                own[name] = _expand(str(item.get("value", "")), {**env, **own})
        return env, own

    def _env_value(
        self, pod: dict[str, Any], source: dict[str, Any], run: podstatus.PodRun
    ) -> str | None:
        namespace = pod["metadata"]["namespace"]
        if "secretKeyRef" in source:
            ref = source["secretKeyRef"]
            data = self._secret_data(namespace, ref)
            if ref["key"] not in data:
                if ref.get("optional"):
                    return None
                raise PodSetupError(
                    "CreateContainerConfigError",
                    f"couldn't find key {ref['key']} in Secret {namespace}/{ref.get('name')}",
                )
            return data[ref["key"]].decode(errors="replace")
        if "configMapKeyRef" in source:
            ref = source["configMapKeyRef"]
            data = self._configmap_data(namespace, ref)
            if ref["key"] not in data:
                if ref.get("optional"):
                    return None
                raise PodSetupError(
                    "CreateContainerConfigError",
                    f"couldn't find key {ref['key']} in ConfigMap {namespace}/{ref.get('name')}",
                )
            return data[ref["key"]].decode(errors="replace")
        if "fieldRef" in source:
            return _field_ref(pod, source["fieldRef"].get("fieldPath", ""), run)
        return ""

    def _secret_data(self, namespace: str, ref: dict[str, Any]) -> dict[str, bytes]:
        record = self.store.find(resources.SECRETS, namespace, str(ref.get("name", "")))
        if record is None:
            if ref.get("optional"):
                return {}
            raise PodSetupError(
                "CreateContainerConfigError", f'secret "{ref.get("name")}" not found'
            )
        return {k: base64.b64decode(v) for k, v in (record.obj.get("data") or {}).items()}

    def _configmap_data(self, namespace: str, ref: dict[str, Any]) -> dict[str, bytes]:
        record = self.store.find(resources.CONFIGMAPS, namespace, str(ref.get("name", "")))
        if record is None:
            if ref.get("optional"):
                return {}
            raise PodSetupError(
                "CreateContainerConfigError", f'configmap "{ref.get("name")}" not found'
            )
        data = {k: str(v).encode() for k, v in (record.obj.get("data") or {}).items()}
        data.update(
            {k: base64.b64decode(v) for k, v in (record.obj.get("binaryData") or {}).items()}
        )
        return data

    def materialise_volumes(self, pod: dict[str, Any], directory: Path) -> list[str]:
        """Write the pod's volumes to disk; link each mountPath under the root. Returns them."""
        namespace = pod["metadata"]["namespace"]
        spec = pod["spec"]
        root = directory / "root"
        volumes_dir = directory / "volumes"
        root.mkdir(parents=True, exist_ok=True)
        sources: dict[str, Path] = {}
        for volume in spec.get("volumes") or []:
            target = volumes_dir / volume["name"]
            sources[volume["name"]] = self._materialise(namespace, volume, target)
        mounts: list[str] = []
        if spec.get("automountServiceAccountToken", True):
            sa_dir = volumes_dir / ".serviceaccount"
            sa_dir.mkdir(parents=True, exist_ok=True)
            (sa_dir / "token").write_text(kubeconfig.TOKEN, encoding="utf-8")
            (sa_dir / "namespace").write_text(namespace, encoding="utf-8")
            (sa_dir / "ca.crt").write_text("", encoding="utf-8")
            _link(root, SERVICE_ACCOUNT_DIR, sa_dir)
            mounts.append(SERVICE_ACCOUNT_DIR)
        for container in spec.get("containers") or []:
            for mount in container.get("volumeMounts") or []:
                source = sources.get(mount["name"])
                if source is None:
                    continue
                if mount.get("subPath"):
                    source = source / mount["subPath"]
                _link(root, mount["mountPath"], source)
                mounts.append(mount["mountPath"])
        if self.api_url:
            kubeconfig.write(directory / "kubeconfig", self.api_url, namespace=namespace)
        return mounts

    def _materialise(self, namespace: str, volume: dict[str, Any], target: Path) -> Path:
        name = volume["name"]
        if "hostPath" in volume:
            return Path(str(volume["hostPath"]["path"]))
        if "persistentVolumeClaim" in volume:
            claim = str(volume["persistentVolumeClaim"]["claimName"])
            path: Path = self.workdir / "volumes" / namespace / claim
            path.mkdir(parents=True, exist_ok=True)
            return path
        target.mkdir(parents=True, exist_ok=True)
        if "secret" in volume:
            source = volume["secret"]
            ref = {"name": source.get("secretName"), "optional": source.get("optional")}
            self._write_files(target, self._secret_volume(namespace, name, ref), source)
        elif "configMap" in volume:
            source = volume["configMap"]
            data = self._volume_data(
                name, "configmap", lambda: self._configmap_data(namespace, source)
            )
            self._write_files(target, data, source)
        elif "projected" in volume:
            for item in volume["projected"].get("sources") or []:
                if "secret" in item:
                    data = self._secret_volume(namespace, name, item["secret"])
                    self._write_files(target, data, item["secret"])
                elif "configMap" in item:
                    source = item["configMap"]
                    data = self._volume_data(
                        name, "configmap", lambda s=source: self._configmap_data(namespace, s)
                    )
                    self._write_files(target, data, source)
                elif "serviceAccountToken" in item:
                    path = item["serviceAccountToken"].get("path", "token")
                    (target / path).write_text(kubeconfig.TOKEN, encoding="utf-8")
        return target

    def _secret_volume(self, namespace: str, volume: str, ref: dict[str, Any]) -> dict[str, bytes]:
        return self._volume_data(volume, "secret", lambda: self._secret_data(namespace, ref))

    @staticmethod
    def _volume_data(volume: str, kind: str, read: Any) -> dict[str, bytes]:
        try:
            data: dict[str, bytes] = read()
        except PodSetupError as e:
            raise PodSetupError(
                "ContainerCreating", f'MountVolume.SetUp failed for volume "{volume}" : {e.message}'
            ) from None
        return data

    @staticmethod
    def _write_files(target: Path, data: dict[str, bytes], source: dict[str, Any]) -> None:
        mode = int(source.get("defaultMode", 0o644))
        items = source.get("items")
        wanted = (
            [(i["key"], i["path"], int(i.get("mode", mode))) for i in items]
            if items
            else [(k, k, mode) for k in data]
        )
        for key, path, file_mode in wanted:
            if key not in data:
                continue
            file = target / path
            file.parent.mkdir(parents=True, exist_ok=True)
            file.write_bytes(data[key])
            file.chmod(file_mode)


def _field_ref(pod: dict[str, Any], path: str, run: podstatus.PodRun) -> str:
    meta = pod["metadata"]
    simple = {
        "metadata.name": meta.get("name", ""),
        "metadata.namespace": meta.get("namespace", ""),
        "metadata.uid": meta.get("uid", ""),
        "spec.nodeName": (pod.get("spec") or {}).get("nodeName", ""),
        "spec.serviceAccountName": (pod.get("spec") or {}).get("serviceAccountName", ""),
        "status.podIP": run.pod_ip,
        "status.hostIP": "",
    }
    if path in simple:
        return str(simple[path])
    for field in ("labels", "annotations"):
        prefix = f"metadata.{field}['"
        if path.startswith(prefix) and path.endswith("']"):
            return str((meta.get(field) or {}).get(path[len(prefix) : -2], ""))
    return ""


def _expand(text: str, env: dict[str, str]) -> str:
    """Kubernetes' `$(VAR)` expansion: `$$` escapes, unknown variables stay as written."""
    out: list[str] = []
    i = 0
    while i < len(text):
        if text.startswith("$$", i):
            out.append("$")
            i += 2
        elif text.startswith("$(", i) and ")" in text[i + 2 :]:
            end = text.index(")", i + 2)
            name = text[i + 2 : end]
            out.append(env[name] if name in env else text[i : end + 1])
            i = end + 1
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def _link(root: Path, mount_path: str, source: Path) -> None:
    link = root / mount_path.lstrip("/")
    link.parent.mkdir(parents=True, exist_ok=True)
    if link.is_symlink() or link.exists():
        if link.is_dir() and not link.is_symlink():
            shutil.rmtree(link)
        else:
            link.unlink()
    link.symlink_to(source.resolve() if source.exists() else source)


def path_rewriter(mounts: list[str], root: Path) -> Any:
    ordered = sorted({m.rstrip("/") or "/" for m in mounts}, key=len, reverse=True)

    def rewrite_path(value: str) -> str | None:
        for mount in ordered:
            if value == mount or value.startswith(mount + "/"):
                return str(root) + value
        return None

    def rewrite(value: str) -> str:
        direct = rewrite_path(value)
        if direct is not None:
            return direct
        if "=" in value:
            name, _, rest = value.partition("=")
            rewritten = rewrite_path(rest)
            if rewritten is not None:
                return f"{name}={rewritten}"
        return value

    return rewrite
