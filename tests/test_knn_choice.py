"""`cluster.knn_backend: auto` on the CPU: the backend measured faster on this machine, stored, then fixed."""

import importlib
import json
import logging

import numpy as np
import pytest

from dsfnet.cluster import knn_choice
from dsfnet.cluster.dbscan import cluster_features
from dsfnet.cluster.knn import resolve_backend
from dsfnet.config import ClusterConfig
from dsfnet.warmup import main as warmup_main
from tests.conftest import clustered_features


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DSFNET_CACHE_DIR", str(tmp_path))
    return tmp_path / knn_choice.CHOICE_FILE


def store(path, backend, self_search=None, **machine_changes):
    record = {"backend": backend, "self_search": self_search or backend,
              "seconds": {"torch": 2.0, "faiss": 1.0, "symmetric": 0.7}, "shape": [6144, 1280, 30],
              "machine": {**knn_choice.machine(), **machine_changes}, "measured_at": "2026-12-07T00:00:00Z"}
    path.write_text(json.dumps(record))


def test_without_a_measurement_auto_is_torch_on_the_cpu(cache):
    assert not cache.exists()
    assert resolve_backend("auto") == "torch"


def test_the_measurement_stores_the_faster_backend_and_auto_follows_it(cache):
    record = knn_choice.measure(shape=(300, 16, 5), repeats=1)
    stored = json.loads(cache.read_text())
    assert stored == record
    seconds = record["seconds"]
    assert set(seconds) == {"torch", "faiss", "symmetric"}
    assert record["backend"] == min(("torch", "faiss"), key=seconds.get)  # queries against a base
    assert record["self_search"] == min(seconds, key=seconds.get)  # the clustering's search of a set against itself
    assert record["machine"]["cpu"] == knn_choice.cpu_model()
    assert resolve_backend("auto") == record["backend"]
    assert resolve_backend("auto", self_search=True) == record["self_search"]
    assert resolve_backend("torch") == "torch" and resolve_backend("faiss") == "faiss"  # explicit settings stay


@pytest.mark.parametrize("backend", ["faiss", "torch", "symmetric"])
def test_a_stored_choice_picks_the_clustering_search(cache, backend, monkeypatch):
    """The clustering step's searches go to the stored backend, and the labels are those of the explicit one."""
    knn_module = importlib.import_module("dsfnet.cluster.knn")  # the package re-exports a function `knn`
    store(cache, "faiss" if backend == "symmetric" else backend, self_search=backend)
    used = []
    for name in ("_torch_top_k", "symmetric_knn"):
        real = getattr(knn_module, name)
        monkeypatch.setattr(knn_module, name, lambda *a, _real=real, _name=name, **kw: used.append(_name)
                            or _real(*a, **kw))
    feats, _ = clustered_features(num_ids=12, per_id=8, dim=32, noise=0.6)
    auto = cluster_features(feats, ClusterConfig(k1=10, k2=3, eps=0.6, min_samples=4, camera_norm=False))
    assert used == {"faiss": [], "torch": ["_torch_top_k"], "symmetric": ["symmetric_knn"]}[backend]
    explicit = cluster_features(feats, ClusterConfig(k1=10, k2=3, eps=0.6, min_samples=4, camera_norm=False,
                                                     knn_backend=backend))
    np.testing.assert_array_equal(auto.labels, explicit.labels)


def test_a_choice_measured_on_another_machine_is_not_used(cache):
    store(cache, "faiss", cpu="Some Other CPU")
    assert resolve_backend("auto") == "torch"
    store(cache, "faiss", threads=knn_choice.machine()["threads"] + 7)  # the winner depends on the thread count too
    assert resolve_backend("auto") == "torch"
    store(cache, "faiss")
    assert resolve_backend("auto") == "faiss"


def test_an_unreadable_choice_is_ignored_with_a_warning_naming_the_file(cache, caplog):
    cache.write_text("{not json")
    with caplog.at_level(logging.WARNING, logger="dsfnet.cluster.knn_choice"):
        assert resolve_backend("auto") == "torch"
    assert str(cache) in caplog.text and "dsfnet.warmup" in caplog.text
    cache.write_text(json.dumps({"backend": "annoy"}))
    assert resolve_backend("auto") == "torch"


def test_a_choice_stored_before_the_symmetric_search_existed_is_measured_again(cache, caplog, capsys, monkeypatch):
    """A record without `self_search` (session 19's format) never saw the symmetric search: `auto` ignores it
    with a warning, and the next warm-up (`make install`) measures all three."""
    store(cache, "faiss")
    record = json.loads(cache.read_text())
    del record["self_search"]
    cache.write_text(json.dumps(record))
    with caplog.at_level(logging.WARNING, logger="dsfnet.cluster.knn_choice"):
        assert resolve_backend("auto", self_search=True) == "torch"
    assert "before the symmetric search existed" in caplog.text and str(cache) in caplog.text
    monkeypatch.setattr(knn_choice.measure, "__defaults__", ((300, 16, 5), 1, None))
    warmup_main([])
    assert "(measured: " in capsys.readouterr().out
    assert set(json.loads(cache.read_text())["seconds"]) == {"torch", "faiss", "symmetric"}


def test_the_warm_up_measures_once_and_keeps_the_choice(cache, capsys, monkeypatch):
    monkeypatch.setattr(knn_choice, "PROBE_SHAPE", (300, 16, 5))
    monkeypatch.setattr(knn_choice.measure, "__defaults__", ((300, 16, 5), 1, None))
    warmup_main([])
    first = json.loads(cache.read_text())
    printed = capsys.readouterr().out
    assert (f"on this CPU: {first['backend']}, and for a set against itself (the clustering's search) "
            f"{first['self_search']} (measured: ") in printed and str(cache) in printed
    warmup_main([])  # a second install on the same machine keeps the stored choice
    assert json.loads(cache.read_text()) == first
    assert f"{first['self_search']} (kept: " in capsys.readouterr().out
    store(cache, "faiss", cpu="Some Other CPU")  # a copied home folder: measured anew for this CPU
    warmup_main([])
    assert json.loads(cache.read_text())["machine"] == knn_choice.machine()
    warmup_main(["--remeasure"])
    assert "(measured: " in capsys.readouterr().out.splitlines()[-1]


def test_an_unwritable_cache_folder_warns_and_auto_stays_on_torch(tmp_path, monkeypatch, caplog):
    """`make install` on a read-only home: the warm-up still finishes, and says which setting to use instead."""
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("")
    monkeypatch.setenv("DSFNET_CACHE_DIR", str(blocked))
    with caplog.at_level(logging.WARNING, logger="dsfnet.cluster.knn_choice"):
        record = knn_choice.measure(shape=(200, 8, 4), repeats=1)
    assert f"cluster.knn_backend to {record['backend']}" in caplog.text and str(blocked) in caplog.text
    assert resolve_backend("auto") == "torch"
