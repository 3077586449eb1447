"""The real kopf operator against localcluster: handlers, children, status, finalizers, resume."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import kopf
import kubernetes
import pytest
from localcluster_helpers import WIDGET_GROUP, until, widget, widget_crd

from avatar_devtools.localcluster import cluster, kopfrun, resources

HANDLERS = "localcluster_kopf_handlers"
WIDGETS = f"widgets.{WIDGET_GROUP}"


@pytest.fixture
def memo(localcluster: cluster.LocalCluster) -> kopf.Memo:
    configuration = kubernetes.client.Configuration(host=localcluster.url)
    return kopf.Memo(
        api=kubernetes.client.ApiClient(configuration),
        created=[],
        resized=[],
        deleted=[],
        conflicts=[],
    )


@pytest.fixture
def quiet_settings() -> kopf.OperatorSettings:
    """Progress in annotations: the widgets' status schema prunes what kopf writes there."""
    settings = kopfrun.fast_settings()
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage()
    settings.posting.level = logging.WARNING
    return settings


def widgets_of(local: cluster.LocalCluster) -> resources.ResourceInfo:
    return local.store.lookup(WIDGET_GROUP, "v1", "widgets")


async def test_create_runs_the_handler_which_makes_a_child_and_a_status(
    localcluster: cluster.LocalCluster,
    kopf_operator: Any,
    memo: kopf.Memo,
    quiet_settings: kopf.OperatorSettings,
    caplog: pytest.LogCaptureFixture,
) -> None:
    localcluster.apply(widget_crd())
    await kopf_operator(modules=[HANDLERS], memo=memo, settings=quiet_settings, watching=[WIDGETS])
    localcluster.apply(widget("w1", size=4))
    info = widgets_of(localcluster)
    status = await until(
        lambda: (r := localcluster.store.find(info, "default", "w1")) and r.obj.get("status")
    )
    assert status == {"phase": "Created", "children": 1}
    child = localcluster.store.get(resources.CONFIGMAPS, "default", "w1-child").obj
    assert child["data"] == {"size": "4"}
    owner = child["metadata"]["ownerReferences"][0]
    assert owner["uid"] == localcluster.store.get(info, "default", "w1").obj["metadata"]["uid"]
    assert memo.created == ["w1"]
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_delete_runs_the_handler_then_kopf_releases_its_finalizer_and_children_go(
    localcluster: cluster.LocalCluster,
    kopf_operator: Any,
    memo: kopf.Memo,
    quiet_settings: kopf.OperatorSettings,
) -> None:
    localcluster.apply(widget_crd())
    await kopf_operator(modules=[HANDLERS], memo=memo, settings=quiet_settings, watching=[WIDGETS])
    info = widgets_of(localcluster)
    localcluster.apply(widget("w1"))
    # kopf puts its finalizer on (a JSON patch that tests the resourceVersion first).
    await until(
        lambda: localcluster.store.get(info, "default", "w1").obj["metadata"].get("finalizers")
    )
    await until(lambda: localcluster.store.find(resources.CONFIGMAPS, "default", "w1-child"))
    marked = localcluster.store.delete(info, "default", "w1")
    assert marked.obj["metadata"]["deletionTimestamp"]
    await until(lambda: localcluster.store.find(info, "default", "w1") is None)
    assert memo.deleted == ["w1"]
    await until(
        lambda: localcluster.store.find(resources.CONFIGMAPS, "default", "w1-child") is None
    )


async def test_kopf_resumes_its_watch_after_a_dropped_connection(
    localcluster: cluster.LocalCluster,
    kopf_operator: Any,
    memo: kopf.Memo,
    quiet_settings: kopf.OperatorSettings,
) -> None:
    localcluster.apply(widget_crd())
    await kopf_operator(modules=[HANDLERS], memo=memo, settings=quiet_settings, watching=[WIDGETS])
    localcluster.apply(widget("w1"))
    await until(lambda: memo.created == ["w1"])
    assert localcluster.server.drop_watches(WIDGETS) >= 1
    localcluster.apply(widget("w2"))  # while kopf is disconnected
    await localcluster.server.wait_for_watches(WIDGETS)
    localcluster.apply(widget("w3"))
    await until(lambda: sorted(memo.created) == ["w1", "w2", "w3"])
    await asyncio.sleep(0.3)
    assert sorted(memo.created) == ["w1", "w2", "w3"]  # each handled once, none replayed twice


async def test_a_stale_replace_in_a_handler_is_a_conflict(
    localcluster: cluster.LocalCluster,
    kopf_operator: Any,
    memo: kopf.Memo,
    quiet_settings: kopf.OperatorSettings,
) -> None:
    localcluster.apply(widget_crd())
    await kopf_operator(modules=[HANDLERS], memo=memo, settings=quiet_settings, watching=[WIDGETS])
    info = widgets_of(localcluster)
    localcluster.apply(widget("w1"))
    await until(lambda: memo.created == ["w1"])
    localcluster.store.patch(
        info, "default", "w1", "application/merge-patch+json", {"spec": {"size": 6}}
    )
    await until(lambda: memo.resized)
    assert memo.resized == [("w1", 6)]
    assert memo.conflicts == [409]


async def test_handler_results_in_an_unschematized_status_are_pruned_as_on_a_real_cluster(
    localcluster: cluster.LocalCluster,
    kopf_operator: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """With kopf's default storage, its status writes vanish: kopf says so, as on a cluster."""
    localcluster.apply(widget_crd())
    await kopf_operator(modules=["localcluster_kopf_results"], watching=[WIDGETS])
    localcluster.apply(widget("w1"))
    await until(lambda: any("inconsistencies" in r.getMessage() for r in caplog.records))
    info = widgets_of(localcluster)
    assert "remember" not in (localcluster.store.get(info, "default", "w1").obj.get("status") or {})


async def test_kopf_relists_after_410_when_its_resume_point_is_compacted(
    localcluster: cluster.LocalCluster,
    kopf_operator: Any,
    memo: kopf.Memo,
    quiet_settings: kopf.OperatorSettings,
) -> None:
    localcluster.apply(widget_crd())
    await kopf_operator(modules=[HANDLERS], memo=memo, settings=quiet_settings, watching=[WIDGETS])
    localcluster.apply(widget("w1"))
    await until(lambda: memo.created == ["w1"])
    localcluster.server.drop_watches(WIDGETS)
    localcluster.apply(widget("w2"))
    localcluster.store.compact()  # kopf's next resume point is gone: 410, then a fresh list
    await until(lambda: sorted(memo.created) == ["w1", "w2"])
    localcluster.apply(widget("w3"))
    await until(lambda: sorted(memo.created) == ["w1", "w2", "w3"])


async def test_a_crd_created_after_the_operator_starts_is_picked_up(
    localcluster: cluster.LocalCluster,
    kopf_operator: Any,
    memo: kopf.Memo,
    quiet_settings: kopf.OperatorSettings,
) -> None:
    """kopf watches CRDs and namespaces; a new CRD makes it rescan discovery and watch."""
    await kopf_operator(
        modules=[HANDLERS],
        memo=memo,
        settings=quiet_settings,
        namespaces=["default"],
        watching=["customresourcedefinitions.apiextensions.k8s.io", "namespaces"],
    )
    localcluster.apply(widget_crd())
    await localcluster.server.wait_for_watches(WIDGETS, namespace="default")
    localcluster.apply(widget("w1"))
    await until(lambda: memo.created == ["w1"])


async def test_server_side_label_selectors_from_kopf_settings(
    localcluster: cluster.LocalCluster,
    kopf_operator: Any,
    memo: kopf.Memo,
    quiet_settings: kopf.OperatorSettings,
) -> None:
    localcluster.apply(widget_crd())
    quiet_settings.watching.label_selectors[WIDGET_GROUP, "widgets"] = "team=red"
    await kopf_operator(modules=[HANDLERS], memo=memo, settings=quiet_settings, watching=[WIDGETS])
    watch = next(w for w in localcluster.server.open_watches() if w.resource == WIDGETS)
    assert not watch.watcher.labels.empty
    blue = widget("blue")
    blue["metadata"]["labels"] = {"team": "blue"}
    red = widget("red")
    red["metadata"]["labels"] = {"team": "red"}
    localcluster.apply(blue)
    localcluster.apply(red)
    await until(lambda: memo.created == ["red"])
    await asyncio.sleep(0.3)
    assert memo.created == ["red"]
