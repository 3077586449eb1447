"""How a kubelet turns a Pod's spec into a local process: its command line, its environment
(`value`, `valueFrom` Secret/ConfigMap keys and the downward API, `envFrom`, `$(VAR)`
expansion) and its volumes on disk (Secret, ConfigMap, emptyDir, downwardAPI, projected with the
ServiceAccount token, PVC, hostPath).

Where the Secrets, ConfigMaps and tokens come from is an `Objects`: the emulator's kubelet reads
its store (`StoreObjects`, the token a fixed one); the real control plane's node agent fetches
what a Pod references through the API with the node's credentials first (`references()` and
`token_sources()` say what), then hands a `FetchedObjects`. The emulator places volumes by the
path rule the kubelet's docstring states (`materialise_volumes`); the node agent mounts the
directories `write_volumes` returns at their mountPaths in a mount namespace of its own."""

from __future__ import annotations

import base64
import os
import shutil
from pathlib import Path
from typing import Any, Protocol

from avatar_devtools.localcluster import fleet, kubeconfig, podstatus, resources, store

SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
POD_ROOT_ENV = "AVATAR_POD_ROOT"

ObjectKey = tuple[str, str]  # (namespace, name)


class PodSetupError(Exception):
    """A pod cannot start yet (a missing Secret, say); it stays Pending with this reason."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


class Objects(Protocol):
    """Where a Pod's Secrets, ConfigMaps and ServiceAccount tokens come from."""

    def secret(self, namespace: str, name: str) -> dict[str, Any] | None:
        """The Secret object, or None when it does not exist."""

    def configmap(self, namespace: str, name: str) -> dict[str, Any] | None:
        """The ConfigMap object, or None when it does not exist."""

    def token(self, pod: dict[str, Any], source: dict[str, Any]) -> str:
        """The token of a projected `serviceAccountToken` source of `pod`."""


class StoreObjects:
    """The emulator's store, read in-process; every token is the emulator's fixed one."""

    def __init__(self, the_store: store.Store) -> None:
        self.store = the_store

    def secret(self, namespace: str, name: str) -> dict[str, Any] | None:
        record = self.store.find(resources.SECRETS, namespace, name)
        return record.obj if record is not None else None

    def configmap(self, namespace: str, name: str) -> dict[str, Any] | None:
        record = self.store.find(resources.CONFIGMAPS, namespace, name)
        return record.obj if record is not None else None

    def token(self, pod: dict[str, Any], source: dict[str, Any]) -> str:
        return kubeconfig.TOKEN


class FetchedObjects:
    """What was fetched beforehand: Secrets and ConfigMaps by (namespace, name), and tokens by
    `token_key(source)`. A key absent from the maps is an object that does not exist."""

    def __init__(
        self,
        secrets: dict[ObjectKey, dict[str, Any]],
        configmaps: dict[ObjectKey, dict[str, Any]],
        tokens: dict[tuple[str, int], str],
    ) -> None:
        self.secrets = secrets
        self.configmaps = configmaps
        self.tokens = tokens

    def secret(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self.secrets.get((namespace, name))

    def configmap(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self.configmaps.get((namespace, name))

    def token(self, pod: dict[str, Any], source: dict[str, Any]) -> str:
        return self.tokens[token_key(source)]


def token_key(source: dict[str, Any]) -> tuple[str, int]:
    """A projected serviceAccountToken source's (audience, expirationSeconds), as the kubelet
    requests it: no audience means the API server's own, the expiry defaults to one hour."""
    return str(source.get("audience") or ""), int(source.get("expirationSeconds") or 3600)


def references(pod: dict[str, Any]) -> tuple[set[ObjectKey], set[ObjectKey]]:
    """The Secrets and the ConfigMaps a Pod's env, envFrom and volumes name."""
    namespace = pod["metadata"]["namespace"]
    spec = pod.get("spec") or {}
    secrets: set[ObjectKey] = set()
    configmaps: set[ObjectKey] = set()
    containers = [*(spec.get("initContainers") or []), *(spec.get("containers") or [])]
    for container in containers:
        for source in container.get("envFrom") or []:
            if "secretRef" in source:
                secrets.add((namespace, str(source["secretRef"].get("name", ""))))
            if "configMapRef" in source:
                configmaps.add((namespace, str(source["configMapRef"].get("name", ""))))
        for item in container.get("env") or []:
            value_from = item.get("valueFrom") or {}
            if "secretKeyRef" in value_from:
                secrets.add((namespace, str(value_from["secretKeyRef"].get("name", ""))))
            if "configMapKeyRef" in value_from:
                configmaps.add((namespace, str(value_from["configMapKeyRef"].get("name", ""))))
    for volume in spec.get("volumes") or []:
        if "secret" in volume:
            secrets.add((namespace, str(volume["secret"].get("secretName", ""))))
        if "configMap" in volume:
            configmaps.add((namespace, str(volume["configMap"].get("name", ""))))
        for item in (volume.get("projected") or {}).get("sources") or []:
            if "secret" in item:
                secrets.add((namespace, str(item["secret"].get("name", ""))))
            if "configMap" in item:
                configmaps.add((namespace, str(item["configMap"].get("name", ""))))
    return secrets, configmaps


def token_sources(pod: dict[str, Any]) -> list[dict[str, Any]]:
    """The Pod's projected serviceAccountToken sources (the API server's ServiceAccount
    admission adds one, in the `kube-api-access-*` volume)."""
    return [
        item["serviceAccountToken"]
        for volume in (pod.get("spec") or {}).get("volumes") or []
        for item in (volume.get("projected") or {}).get("sources") or []
        if "serviceAccountToken" in item
    ]


class PodFiles:
    """A Pod's command, environment and volumes, read from `objects`."""

    def __init__(
        self,
        objects: Objects,
        config: fleet.KubeletConfig,
        api_url: str | None,
        workdir: Path,
    ) -> None:
        self.objects = objects
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
        self,
        pod: dict[str, Any],
        spec: dict[str, Any],
        run: podstatus.PodRun,
        extra: dict[str, str] | None = None,
    ) -> tuple[dict[str, str], dict[str, str]]:
        """The kubelet's environment (inherited, plus what it sets, plus `extra`, such as the
        `kubernetes` Service's variables), and the container's own."""
        namespace = pod["metadata"]["namespace"]
        env = {k: v for k, v in os.environ.items() if not k.startswith("KUBERNETES_SERVICE")}
        env["HOSTNAME"] = pod["metadata"]["name"]
        env.update(extra or {})
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
        obj = self.objects.secret(namespace, str(ref.get("name", "")))
        if obj is None:
            if ref.get("optional"):
                return {}
            raise PodSetupError(
                "CreateContainerConfigError", f'secret "{ref.get("name")}" not found'
            )
        return {k: base64.b64decode(v) for k, v in (obj.get("data") or {}).items()}

    def _configmap_data(self, namespace: str, ref: dict[str, Any]) -> dict[str, bytes]:
        obj = self.objects.configmap(namespace, str(ref.get("name", "")))
        if obj is None:
            if ref.get("optional"):
                return {}
            raise PodSetupError(
                "CreateContainerConfigError", f'configmap "{ref.get("name")}" not found'
            )
        data = {k: str(v).encode() for k, v in (obj.get("data") or {}).items()}
        data.update({k: base64.b64decode(v) for k, v in (obj.get("binaryData") or {}).items()})
        return data

    def write_volumes(
        self, pod: dict[str, Any], directory: Path, run: podstatus.PodRun | None = None
    ) -> dict[str, Path]:
        """Write the pod's volumes under `directory/volumes`; returns each volume's path by
        name (a hostPath's is the host's own path, a claim's one that outlives the pod)."""
        namespace = pod["metadata"]["namespace"]
        volumes_dir = directory / "volumes"
        sources: dict[str, Path] = {}
        for volume in pod["spec"].get("volumes") or []:
            target = volumes_dir / volume["name"]
            sources[volume["name"]] = self._materialise(pod, namespace, volume, target, run)
        return sources

    def materialise_volumes(self, pod: dict[str, Any], directory: Path) -> list[str]:
        """Write the pod's volumes to disk; link each mountPath under the root. Returns them."""
        namespace = pod["metadata"]["namespace"]
        spec = pod["spec"]
        root = directory / "root"
        volumes_dir = directory / "volumes"
        root.mkdir(parents=True, exist_ok=True)
        sources = self.write_volumes(pod, directory)
        mounts: list[str] = []
        mounted = {
            m.get("mountPath", "").rstrip("/")
            for c in spec.get("containers") or []
            for m in c.get("volumeMounts") or []
        }
        # An API server's ServiceAccount admission mounts the token's projected volume itself;
        # the emulator's does not, so the kubelet makes the directory.
        if spec.get("automountServiceAccountToken", True) and SERVICE_ACCOUNT_DIR not in mounted:
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

    def _materialise(
        self,
        pod: dict[str, Any],
        namespace: str,
        volume: dict[str, Any],
        target: Path,
        run: podstatus.PodRun | None,
    ) -> Path:
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
        elif "downwardAPI" in volume:
            source = volume["downwardAPI"]
            self._write_files(target, _downward_files(pod, source, run), _modes_only(source))
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
                elif "downwardAPI" in item:
                    data = _downward_files(pod, item["downwardAPI"], run)
                    self._write_files(target, data, _modes_only(item["downwardAPI"]))
                elif "serviceAccountToken" in item:
                    token_source = item["serviceAccountToken"]
                    path = token_source.get("path", "token")
                    token = self.objects.token(pod, token_source)
                    (target / path).write_text(token, encoding="utf-8")
                    (target / path).chmod(int(volume["projected"].get("defaultMode", 0o644)))
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


def _modes_only(source: dict[str, Any]) -> dict[str, Any]:
    """A downwardAPI source's modes: its items name fields, not keys."""
    return {"defaultMode": source["defaultMode"]} if "defaultMode" in source else {}


def _downward_files(
    pod: dict[str, Any], source: dict[str, Any], run: podstatus.PodRun | None
) -> dict[str, bytes]:
    """A downwardAPI volume's files by their path (`fieldRef` items; `metadata.labels` and
    `.annotations` as the kubelet writes them: `key="value"` lines, sorted)."""
    meta = pod["metadata"]
    files: dict[str, bytes] = {}
    for item in source.get("items") or []:
        field = (item.get("fieldRef") or {}).get("fieldPath", "")
        if field in ("metadata.labels", "metadata.annotations"):
            values = meta.get(field.split(".", 1)[1]) or {}
            text = "\n".join(f'{k}="{v}"' for k, v in sorted(values.items()))
        elif field:
            text = _field_ref(pod, field, run)
        else:
            continue  # resourceFieldRef: limits are not enforced here
        files[item["path"]] = text.encode()
    return files


def _field_ref(pod: dict[str, Any], path: str, run: podstatus.PodRun | None) -> str:
    meta = pod["metadata"]
    simple = {
        "metadata.name": meta.get("name", ""),
        "metadata.namespace": meta.get("namespace", ""),
        "metadata.uid": meta.get("uid", ""),
        "spec.nodeName": (pod.get("spec") or {}).get("nodeName", ""),
        "spec.serviceAccountName": (pod.get("spec") or {}).get("serviceAccountName", ""),
        "status.podIP": run.pod_ip if run is not None else "",
        "status.hostIP": run.host_ip if run is not None else "",
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
