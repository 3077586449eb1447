"""Fleet descriptions: the example file, defaults, and the errors a bad one gets."""

from __future__ import annotations

from pathlib import Path

import pytest

from avatar_devtools.localcluster import fleet


def test_example_fleet_loads(repo_root: Path) -> None:
    example = fleet.load(repo_root / "examples" / "fleet.yaml")
    names = [n.name for n in example.nodes]
    assert names == ["h100-0", "h100-1", "h200", "cpu"]
    assert len({n.address for n in example.nodes}) == 4
    h200 = example.nodes[2].manifest()
    assert h200["metadata"]["labels"]["nvidia.com/gpu.memory"] == "143771"
    assert h200["spec"]["taints"][0]["key"] == "nvidia.com/gpu"
    cpu = example.nodes[3].manifest()
    assert not any(k.startswith("nvidia.com/") for k in cpu["metadata"]["labels"])
    assert "nvidia.com/gpu" not in cpu["status"]["allocatable"]
    assert example.kubelet.images["avatar-worker"] == ("python", "-m", "avatar_worker")


@pytest.mark.parametrize(
    ("document", "words"),
    [
        ({"nodes": [{"gpus": 1}]}, "needs a name"),
        ({"nodes": [{"name": "a"}, {"name": "a"}]}, "duplicate node names: a"),
        ({"nodes": [{"name": "a", "taints": [{"key": "k"}]}]}, "key and an effect"),
        ({"kubelet": {"mode": "docker"}, "nodes": []}, "kubelet.mode"),
        ([], "a fleet is a map"),
    ],
)
def test_bad_fleets_are_refused_with_the_entry(document: object, words: str) -> None:
    with pytest.raises(fleet.FleetError, match=words):
        fleet.parse(document)
