"""The store's write path, without HTTP: metadata, generation, status, deletion, GC."""

from __future__ import annotations

import base64
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from localcluster_helpers import widget, widget_crd

from avatar_devtools.localcluster import errors, resources, selectors, store, watching


@pytest.fixture
def db() -> store.Store:
    the_store = store.Store(history=64)
    the_store.create(resources.CRDS, None, widget_crd())
    return the_store


def widgets(db: store.Store) -> resources.ResourceInfo:
    return db.lookup("test.localcluster.dev", "v1", "widgets")


def pod(name: str, **meta: Any) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, **meta},
        "spec": {"containers": [{"name": "main", "image": "busybox:1"}]},
    }


def owner_ref(record: watching.Record) -> dict[str, Any]:
    return {
        "apiVersion": record.obj["apiVersion"],
        "kind": record.obj["kind"],
        "name": record.name,
        "uid": record.obj["metadata"]["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


def events(db: store.Store, info: resources.ResourceInfo) -> list[watching.WatchEvent]:
    seen: list[watching.WatchEvent] = []
    db.add_listener(info, seen.append)
    return seen


def test_create_stamps_system_metadata(db: store.Store) -> None:
    record = db.create(widgets(db), "default", widget("w1"))
    meta = record.obj["metadata"]
    assert meta["uid"] and meta["creationTimestamp"].endswith("Z")
    assert meta["generation"] == 1
    assert meta["resourceVersion"] == str(db.rv)
    assert record.obj["spec"]["color"] == "red"  # defaulted by the schema


def test_one_resource_version_counter_across_resources(db: store.Store) -> None:
    first = db.create(widgets(db), "default", widget("w1"))
    second = db.create(resources.PODS, "default", pod("p1"))
    third = db.patch(widgets(db), "default", "w1", store.MERGE_PATCH, {"spec": {"size": 4}})
    assert first.rv < second.rv < third.rv == db.rv


def test_generation_moves_on_spec_changes_only(db: store.Store) -> None:
    info = widgets(db)
    db.create(info, "default", widget("w1"))
    labelled = db.patch(
        info, "default", "w1", store.MERGE_PATCH, {"metadata": {"labels": {"a": "b"}}}
    )
    status = db.patch(
        info, "default", "w1", store.MERGE_PATCH, {"status": {"phase": "Ok"}}, subresource="status"
    )
    resized = db.patch(info, "default", "w1", store.MERGE_PATCH, {"spec": {"size": 5}})
    assert labelled.obj["metadata"]["generation"] == 1
    assert status.obj["metadata"]["generation"] == 1
    assert resized.obj["metadata"]["generation"] == 2


def test_pod_generation_moves_on_spec_change(db: store.Store) -> None:
    db.create(resources.PODS, "default", pod("p1"))
    patch = {"spec": {"containers": [{"name": "main", "image": "busybox:2"}]}}
    changed = db.patch(resources.PODS, "default", "p1", store.STRATEGIC_PATCH, patch)
    assert changed.obj["metadata"]["generation"] == 2
    assert changed.obj["spec"]["containers"][0]["image"] == "busybox:2"


def test_update_that_changes_nothing_is_a_no_op(db: store.Store) -> None:
    info = widgets(db)
    created = db.create(info, "default", widget("w1"))
    seen = events(db, info)
    same = db.patch(info, "default", "w1", store.MERGE_PATCH, {"spec": {"size": 3}})
    assert same.rv == created.rv
    assert seen == []


def test_status_is_a_subresource_apart_from_spec(db: store.Store) -> None:
    info = widgets(db)
    db.create(info, "default", {**widget("w1"), "status": {"phase": "Dropped"}})
    main = db.patch(
        info, "default", "w1", store.MERGE_PATCH, {"spec": {"size": 2}, "status": {"phase": "No"}}
    )
    assert "status" not in main.obj  # status on create and on the main resource is ignored
    status = db.patch(
        info,
        "default",
        "w1",
        store.MERGE_PATCH,
        {"spec": {"size": 9}, "status": {"phase": "Yes"}},
        subresource="status",
    )
    assert status.obj["status"] == {"phase": "Yes"}
    assert status.obj["spec"]["size"] == 2


def test_stale_resource_version_is_a_conflict(db: store.Store) -> None:
    info = widgets(db)
    created = db.create(info, "default", widget("w1"))
    db.patch(info, "default", "w1", store.MERGE_PATCH, {"spec": {"size": 4}})
    stale = dict(created.obj)
    with pytest.raises(errors.ApiError) as put:
        db.update(info, "default", "w1", stale)
    with pytest.raises(errors.ApiError) as patch:
        db.patch(
            info,
            "default",
            "w1",
            store.MERGE_PATCH,
            {"metadata": {"resourceVersion": created.obj["metadata"]["resourceVersion"]}},
        )
    assert (put.value.code, put.value.reason) == (409, "Conflict")
    assert (patch.value.code, patch.value.reason) == (409, "Conflict")
    assert "the object has been modified" in put.value.message


def test_failed_json_patch_test_is_422(db: store.Store) -> None:
    info = widgets(db)
    db.create(info, "default", widget("w1"))
    ops = [
        {"op": "test", "path": "/metadata/resourceVersion", "value": "1"},
        {"op": "add", "path": "/metadata/finalizers", "value": ["x/y"]},
    ]
    with pytest.raises(errors.ApiError) as e:
        db.patch(info, "default", "w1", store.JSON_PATCH, ops)
    assert e.value.code == 422


def test_create_twice_is_already_exists_and_missing_is_not_found(db: store.Store) -> None:
    db.create(resources.PODS, "default", pod("p1"))
    with pytest.raises(errors.ApiError) as exists:
        db.create(resources.PODS, "default", pod("p1"))
    with pytest.raises(errors.ApiError) as missing:
        db.get(resources.PODS, "default", "p2")
    assert (exists.value.code, exists.value.reason) == (409, "AlreadyExists")
    assert (missing.value.code, missing.value.message) == (404, 'pods "p2" not found')


def test_generate_name(db: store.Store) -> None:
    record = db.create(resources.PODS, "default", pod("", generateName="worker-"))
    assert record.name.startswith("worker-") and len(record.name) == len("worker-") + 5


def test_finalizers_block_deletion_until_removed(db: store.Store) -> None:
    info = widgets(db)
    db.create(info, "default", {**widget("w1"), "metadata": {"name": "w1", "finalizers": ["a/b"]}})
    seen = events(db, info)
    marked = db.delete(info, "default", "w1")
    assert marked.obj["metadata"]["deletionTimestamp"]
    with pytest.raises(errors.ApiError) as late:
        db.patch(
            info, "default", "w1", store.MERGE_PATCH, {"metadata": {"finalizers": ["a/b", "c/d"]}}
        )
    assert late.value.code == 422
    db.patch(info, "default", "w1", store.MERGE_PATCH, {"metadata": {"finalizers": None}})
    assert db.find(info, "default", "w1") is None
    assert [e.kind for e in seen] == [watching.MODIFIED, watching.DELETED]


def test_background_cascade_deletes_dependents(db: store.Store) -> None:
    info = widgets(db)
    owner = db.create(info, "default", widget("w1"))
    db.create(resources.PODS, "default", pod("child", ownerReferences=[owner_ref(owner)]))
    grandchild = db.get(resources.PODS, "default", "child")
    db.create(
        resources.SECRETS,
        "default",
        {"metadata": {"name": "s", "ownerReferences": [owner_ref(grandchild)]}},
    )
    db.delete(info, "default", "w1")
    assert db.find(resources.PODS, "default", "child") is not None  # background: after the write
    db.collect_garbage()
    assert db.find(resources.PODS, "default", "child") is None
    assert db.find(resources.SECRETS, "default", "s") is None


def test_dependent_with_a_living_owner_loses_only_the_dangling_reference(db: store.Store) -> None:
    info = widgets(db)
    first = db.create(info, "default", widget("w1"))
    second = db.create(info, "default", widget("w2"))
    refs = [owner_ref(first), {**owner_ref(second), "controller": False}]
    db.create(resources.SECRETS, "default", {"metadata": {"name": "s", "ownerReferences": refs}})
    db.delete(info, "default", "w1")
    db.collect_garbage()
    left = db.get(resources.SECRETS, "default", "s").obj["metadata"]["ownerReferences"]
    assert [r["name"] for r in left] == ["w2"]


def test_orphan_propagation_keeps_dependents(db: store.Store) -> None:
    info = widgets(db)
    owner = db.create(info, "default", widget("w1"))
    db.create(
        resources.SECRETS,
        "default",
        {"metadata": {"name": "s", "ownerReferences": [owner_ref(owner)]}},
    )
    db.delete(info, "default", "w1", propagation="Orphan")
    db.collect_garbage()
    assert db.find(info, "default", "w1") is None
    assert (
        "ownerReferences" not in db.get(resources.SECRETS, "default", "s").obj["metadata"]
        or not (db.get(resources.SECRETS, "default", "s").obj["metadata"]["ownerReferences"])
    )


def test_foreground_propagation_deletes_dependents_first(db: store.Store) -> None:
    info = widgets(db)
    owner = db.create(info, "default", widget("w1"))
    db.create(
        resources.SECRETS,
        "default",
        {"metadata": {"name": "s", "ownerReferences": [owner_ref(owner)], "finalizers": ["hold"]}},
    )
    marked = db.delete(info, "default", "w1", propagation="Foreground")
    assert store.FOREGROUND_FINALIZER in marked.obj["metadata"]["finalizers"]
    db.collect_garbage()
    assert db.find(info, "default", "w1") is not None  # waits for the held dependent
    db.patch(
        resources.SECRETS, "default", "s", store.MERGE_PATCH, {"metadata": {"finalizers": None}}
    )
    db.collect_garbage()
    assert db.find(info, "default", "w1") is None


def test_deleting_a_namespace_deletes_what_is_in_it(db: store.Store) -> None:
    db.create(resources.NAMESPACES, None, {"metadata": {"name": "team"}})
    db.collect_garbage()
    db.create(resources.PODS, "team", pod("p1"))
    db.create(widgets(db), "team", widget("w1", namespace="team"))
    marked = db.delete(resources.NAMESPACES, None, "team")
    assert marked.obj["status"]["phase"] == "Terminating"
    with pytest.raises(errors.ApiError) as refused:
        db.create(resources.PODS, "team", pod("p2"))
    assert refused.value.code == 403
    db.collect_garbage()
    assert db.find(resources.NAMESPACES, None, "team") is None
    assert db.list(resources.PODS, "team").records == []


def test_create_in_missing_namespace_is_not_found(db: store.Store) -> None:
    with pytest.raises(errors.ApiError) as e:
        db.create(resources.PODS, "nowhere", pod("p1"))
    assert e.value.message == 'namespaces "nowhere" not found'


def test_deleting_a_crd_deletes_its_objects_and_unserves_it(db: store.Store) -> None:
    db.create(widgets(db), "default", widget("w1"))
    db.delete(resources.CRDS, None, "widgets.test.localcluster.dev")
    db.collect_garbage()
    assert db.resources.get("test.localcluster.dev", "v1", "widgets") is None
    assert db.find(resources.CRDS, None, "widgets.test.localcluster.dev") is None


def test_secret_string_data_becomes_base64_data(db: store.Store) -> None:
    record = db.create(
        resources.SECRETS, "default", {"metadata": {"name": "s"}, "stringData": {"token": "abc"}}
    )
    assert record.obj["data"] == {"token": base64.b64encode(b"abc").decode()}
    assert "stringData" not in record.obj and record.obj["type"] == "Opaque"
    with pytest.raises(errors.ApiError) as bad:
        db.create(resources.SECRETS, "default", {"metadata": {"name": "t"}, "data": {"k": "%%%"}})
    assert bad.value.code == 422 and "data[k]" in bad.value.message


def test_pod_spec_is_immutable_but_for_images(db: store.Store) -> None:
    db.create(resources.PODS, "default", pod("p1"))
    with pytest.raises(errors.ApiError) as e:
        db.patch(
            resources.PODS, "default", "p1", store.MERGE_PATCH, {"spec": {"restartPolicy": "Never"}}
        )
    assert e.value.code == 422
    assert e.value.details and e.value.details["causes"][0]["field"] == "spec"


def test_invalid_names_are_refused_with_the_field(db: store.Store) -> None:
    with pytest.raises(errors.ApiError) as e:
        db.create(resources.PODS, "default", pod("Not_A_Name"))
    assert e.value.code == 422
    assert e.value.details and e.value.details["causes"][0]["field"] == "metadata.name"


def test_list_with_selectors_and_pages(db: store.Store) -> None:
    for i in range(7):
        db.create(
            resources.PODS,
            "default",
            pod(f"p{i}", labels={"parity": "even" if i % 2 == 0 else "odd"}),
        )
    db.create(resources.PODS, "kube-system", pod("other", labels={"parity": "even"}))
    even = selectors.parse_labels("parity=even")
    assert [r.name for r in db.list(resources.PODS, "default", labels=even).records] == [
        "p0",
        "p2",
        "p4",
        "p6",
    ]
    assert len(db.list(resources.PODS, None, labels=even).records) == 5
    by_name = selectors.parse_fields("metadata.name=p3", resources.PODS.field_labels)
    assert [r.name for r in db.list(resources.PODS, None, fields=by_name).records] == ["p3"]
    first = db.list(resources.PODS, "default", limit=3)
    second = db.list(resources.PODS, "default", limit=3, continue_token=first.continue_token)
    third = db.list(resources.PODS, "default", limit=3, continue_token=second.continue_token)
    names = [r.name for page in (first, second, third) for r in page.records]
    assert names == [f"p{i}" for i in range(7)] and third.continue_token is None
    assert first.rv == second.rv == third.rv


def test_watch_resumes_and_expires(db: store.Store) -> None:
    info = widgets(db)
    db.create(info, "default", widget("w1"))
    since = str(db.rv)
    for size in range(4, 8):
        db.patch(info, "default", "w1", store.MERGE_PATCH, {"spec": {"size": size}})
    nothing = selectors.EVERYTHING_LABELS
    resumed = db.watch(
        info,
        None,
        since=since,
        labels=nothing,
        fields=selectors.EVERYTHING_FIELDS,
        notify=lambda: None,
    )
    assert len(resumed.pending) == 4
    db.compact()
    with pytest.raises(errors.ApiError) as gone:
        db.watch(
            info,
            None,
            since=since,
            labels=nothing,
            fields=selectors.EVERYTHING_FIELDS,
            notify=lambda: None,
        )
    assert (gone.value.code, gone.value.reason) == (410, "Expired")


def test_watch_with_a_selector_sees_objects_enter_and_leave(db: store.Store) -> None:
    info = widgets(db)
    db.create(info, "default", widget("w1"))
    red = selectors.parse_labels("team=red")
    watcher = db.watch(
        info,
        None,
        since=str(db.rv),
        labels=red,
        fields=selectors.EVERYTHING_FIELDS,
        notify=lambda: None,
    )
    db.patch(info, "default", "w1", store.MERGE_PATCH, {"metadata": {"labels": {"team": "red"}}})
    db.patch(info, "default", "w1", store.MERGE_PATCH, {"spec": {"size": 9}})
    db.patch(info, "default", "w1", store.MERGE_PATCH, {"metadata": {"labels": {"team": "blue"}}})
    kinds = [line.split(b'"')[3].decode() for line in watcher.pending]
    assert kinds == ["ADDED", "MODIFIED", "DELETED"]


def test_versions_of_one_crd_share_objects(db: store.Store) -> None:
    crd = widget_crd(plural="gadgets", kind="Gadget")
    beta = {**crd["spec"]["versions"][0], "name": "v1beta1", "storage": False}
    crd["spec"]["versions"].append(beta)
    db.create(resources.CRDS, None, crd)
    v1 = db.lookup("test.localcluster.dev", "v1", "gadgets")
    v1beta1 = db.lookup("test.localcluster.dev", "v1beta1", "gadgets")
    body = {
        "apiVersion": "test.localcluster.dev/v1beta1",
        "kind": "Gadget",
        "metadata": {"name": "g"},
        "spec": {"size": 1},
    }
    created = db.create(v1beta1, "default", body)
    assert created.obj["apiVersion"] == "test.localcluster.dev/v1"  # stored as the storage version
    assert b'"apiVersion":"test.localcluster.dev/v1beta1"' in db.get(
        v1beta1, "default", "g"
    ).projected(v1beta1.api_version)
    assert db.get(v1, "default", "g").projected(v1.api_version) == created.raw


def test_cluster_scoped_custom_resources(db: store.Store) -> None:
    db.create(resources.CRDS, None, widget_crd(plural="fleets", kind="Fleet", scope="Cluster"))
    info = db.lookup("test.localcluster.dev", "v1", "fleets")
    body = {
        "apiVersion": "test.localcluster.dev/v1",
        "kind": "Fleet",
        "metadata": {"name": "f", "namespace": "x"},
        "spec": {"size": 1},
    }
    record = db.create(info, None, body)
    assert "namespace" not in record.obj["metadata"]
    assert db.get(info, None, "f").name == "f"


@settings(max_examples=40, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["put", "delete"]),
            st.sampled_from(["default", "kube-public"]),
            st.integers(0, 4),
            st.dictionaries(st.sampled_from(["a", "b"]), st.sampled_from(["1", "2"]), max_size=2),
        ),
        max_size=25,
    ),
    st.sampled_from(["a=1", "a=1,b=2", "b=2,a!=2", "a in (1,2)", "!a", "b"]),
)
def test_label_index_agrees_with_filtering(
    steps: list[tuple[str, str, int, dict[str, str]]], selector: str
) -> None:
    db = store.Store()
    for action, namespace, number, labels in steps:
        name = f"p{number}"
        exists = db.find(resources.CONFIGMAPS, namespace, name) is not None
        if action == "delete" and exists:
            db.delete(resources.CONFIGMAPS, namespace, name)
        elif action == "put" and exists:
            patch = {"metadata": {"labels": {"a": None, "b": None, **labels}}}
            db.patch(resources.CONFIGMAPS, namespace, name, store.MERGE_PATCH, patch)
        elif action == "put":
            body = {"metadata": {"name": name, "labels": labels}}
            db.create(resources.CONFIGMAPS, namespace, body)
    parsed = selectors.parse_labels(selector)
    for scope in ("default", "kube-public", None):
        everything = db.list(resources.CONFIGMAPS, scope).records
        expected = [r.name for r in everything if parsed.matches(r.obj["metadata"].get("labels"))]
        found = db.list(resources.CONFIGMAPS, scope, labels=parsed).records
        assert [r.name for r in found] == expected
