"""DSFNet's parts against literal reference computations: FINet heads, memories, SCNet, DDO, pair scores."""

from __future__ import annotations

import itertools
from dataclasses import replace

import numpy as np
import pytest
import scipy.sparse as sp
import torch
import torch.nn.functional as F
import torchvision

from dsfnet.cluster.ddo import dynamic_lambda, fuse_distances, neighbourhood_agreement
from dsfnet.cluster.jaccard import jaccard_distance
from dsfnet.cluster.scnet import HardProxies, secondary_clustering, split_oversized
from dsfnet.config import DDOConfig, DSFNetConfig, FINetConfig, SCNetConfig
from dsfnet.label_stats import label_quality
from dsfnet.memory import HardProxyMemory, momentum_update, occurrence_rank
from dsfnet.models import ModelConfig, ReIDNet, build_model
from dsfnet.objective import DSFNetObjective
from dsfnet.trainer import check_model_matches


def finet_model(parts: int = 2) -> torch.nn.Module:
    torch.manual_seed(0)
    return ReIDNet(ModelConfig(), num_parts=parts, fuse_parts=True)


def test_finet_branches_are_bn_necks_of_horizontal_stripes():
    model = finet_model(parts=2).eval()
    images = torch.randn(3, 3, 64, 32)
    out = model.branches(images)
    fmap = model.trunk(images)  # (3, 512, 16, 8) at last stride 1
    top, bottom = fmap[:, :, : fmap.shape[2] // 2].mean(dim=(2, 3)), fmap[:, :, fmap.shape[2] // 2 :].mean(dim=(2, 3))
    torch.testing.assert_close(out.parts[:, 0], model.part_necks[0](top))
    torch.testing.assert_close(out.parts[:, 1], model.part_necks[1](bottom))
    torch.testing.assert_close(out.global_, model.neck(fmap.mean(dim=(2, 3))))
    # integration starts uniform; the fused feature concatenates the normalised branches scaled by √w, so
    # fused·fused' is the weight-averaged cosine similarity of the branches
    torch.testing.assert_close(out.weights, torch.full((3, 3), 1 / 3))
    branches = [F.normalize(out.global_, dim=1), F.normalize(out.parts[:, 0], dim=1),
                F.normalize(out.parts[:, 1], dim=1)]
    torch.testing.assert_close(out.fused, torch.cat(branches, dim=1) / 3 ** 0.5)
    assert out.fused.shape == (3, model.embedding_dim) == (3, 3 * 512)
    torch.testing.assert_close(out.fused.norm(dim=1), torch.ones(3))
    similarity = out.fused @ out.fused.T
    torch.testing.assert_close(similarity, sum(b @ b.T for b in branches) / 3)
    torch.testing.assert_close(model(images), out.fused)  # eval output: the fused feature


def test_finet_weights_are_per_sample_and_sum_to_one():
    model = finet_model(parts=3)
    torch.nn.init.normal_(model.integration.score[2].weight, std=1.0)
    out = model.train().branches(torch.randn(4, 3, 48, 24))
    assert out.parts.shape == (4, 3, 512) and out.weights.shape == (4, 4)
    torch.testing.assert_close(out.weights.sum(dim=1), torch.ones(4))
    assert not torch.allclose(out.weights[0], out.weights[1])


def test_baseline_network_keeps_its_parameter_names():
    names = set(build_model(ModelConfig()).state_dict())
    assert {"neck.weight", "neck.bias", "neck.running_mean"} <= names
    assert not any(n.startswith(("part_necks", "integration")) for n in names)


def test_model_settings_must_match_the_method():
    with pytest.raises(ValueError, match="num_parts=0.*need num_parts=2"):
        check_model_matches(build_model(ModelConfig()), DSFNetConfig())


def test_pretrained_weights_missing_or_for_another_arch_fail_before_training(tmp_path):
    with pytest.raises(FileNotFoundError, match="model.pretrained: weights file .*nope.pth does not exist"):
        build_model(ModelConfig(pretrained=str(tmp_path / "nope.pth")))
    r50 = tmp_path / "resnet50.pth"
    torch.save(torchvision.models.resnet50(weights=None).state_dict(), r50)
    with pytest.raises(ValueError, match="does not match model.arch=resnet18"):
        build_model(ModelConfig(arch="resnet18", pretrained=str(r50)))
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match="not a readable torch weights file"):
        build_model(ModelConfig(pretrained=str(junk)))
    torch.manual_seed(5)
    r18 = torchvision.models.resnet18(weights=None)
    path = tmp_path / "resnet18.pth"
    torch.save(r18.state_dict(), path)
    model = build_model(ModelConfig(arch="resnet18", pretrained=str(path)))
    torch.testing.assert_close(model.trunk[0].weight, r18.conv1.weight)
    torch.testing.assert_close(model.trunk[7][1].conv2.weight, r18.layer4[1].conv2.weight)


def test_vectorised_momentum_update_equals_the_sample_by_sample_loop():
    torch.manual_seed(1)
    bank = F.normalize(torch.randn(6, 16), dim=1)
    inputs = F.normalize(torch.randn(20, 16), dim=1)
    targets = torch.tensor([3, 1, 3, 3, 0, 5, 1, 3, 2, 2, 0, 5, 5, 4, 3, 1, 1, 0, 2, 3])
    expected = bank.clone()
    for x, y in zip(inputs, targets, strict=True):
        expected[y] = F.normalize(0.2 * expected[y] + 0.8 * x, dim=0)
    np.testing.assert_array_equal(occurrence_rank(targets).numpy(),
                                  [int((targets[:i] == t).sum()) for i, t in enumerate(targets)])
    momentum_update(bank, inputs, targets, 0.2)
    torch.testing.assert_close(bank, expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("positive", ["own", "hardest"])
def test_hard_proxy_loss_contrasts_one_own_proxy_against_other_clusters(positive):
    torch.manual_seed(2)
    proxies = F.normalize(torch.randn(7, 8), dim=1)
    owners = torch.tensor([0, 0, 1, 1, 1, 2, 2])
    memory = HardProxyMemory(proxies, owners, temperature=0.1, momentum=0.5, positive=positive)
    inputs = torch.randn(4, 8, requires_grad=True)
    targets, proxy_targets = torch.tensor([1, 0, 2, 1]), torch.tensor([3, 0, 6, 2])
    loss = memory(inputs, proxy_targets)
    assert torch.equal(owners[proxy_targets], targets)
    x = F.normalize(inputs.detach(), dim=1)
    expected = []
    for i in range(4):
        sims = x[i] @ proxies.T / 0.1
        own = [j for j in range(7) if owners[j] == targets[i]]
        chosen = min(own, key=lambda j: float(sims[j])) if positive == "hardest" else int(proxy_targets[i])
        negatives = [j for j in range(7) if owners[j] != targets[i]]
        logits = torch.stack([sims[chosen]] + [sims[j] for j in negatives])
        expected.append(-torch.log_softmax(logits, dim=0)[0])
    assert float(loss.detach()) == pytest.approx(float(torch.stack(expected).mean()), rel=1e-5)
    loss.backward()
    assert inputs.grad is not None and torch.isfinite(inputs.grad).all()
    torch.testing.assert_close(memory.features[3], F.normalize(0.5 * proxies[3] + 0.5 * x[0], dim=0))
    torch.testing.assert_close(memory.features[1], proxies[1])  # no sample of proxy 1 in the batch
    with pytest.raises(ValueError, match="positive"):
        HardProxyMemory(proxies, owners, positive="easiest")


def _unit(*rows):
    x = np.array(rows, dtype=np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _around(direction, count, seed, spread=0.05):
    rng = np.random.default_rng(seed)
    x = np.asarray(direction, dtype=np.float32) + spread * rng.standard_normal((count, len(direction)))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_secondary_clustering_splits_chained_clusters_into_sub_clusters():
    # cluster 0 as DBSCAN may chain it: 6 samples around e0, 4 around e1, one stray off both, nearer e1;
    # cluster 1: 5 samples around e3 (too few to yield two sub-clusters of min_size 4); one outlier
    stray = _unit([0.1, 0.5, 1, 0])  # > sub_distance from both modes: a sub-cluster of one
    features = np.concatenate([_around([1, 0, 0, 0], 6, 0), _around([0, 1, 0, 0], 4, 1), stray,
                               _around([0, 0, 0, 1], 5, 2), _unit([0, 0, 1, 0])])
    labels = np.array([0] * 11 + [1] * 5 + [-1])
    proxies = secondary_clustering(features, labels, sub_distance=0.5, min_size=4, linkage="complete")
    core, mode, other = np.arange(6), np.arange(6, 11), np.arange(11, 16)  # the stray joins its nearest mode
    groups = [np.flatnonzero(proxies.assignment == p) for p in range(len(proxies.proxies))]
    assert [g.tolist() for g in groups] == [core.tolist(), mode.tolist(), other.tolist()]
    assert proxies.owners.tolist() == [0, 0, 1] and proxies.split_clusters == 1
    assert proxies.assignment[16] == -1 and not proxies.hard[16]
    np.testing.assert_array_equal(np.flatnonzero(proxies.intra_hard), mode)  # outside the core: hard
    for p, members in enumerate(groups):
        mean = features[members].mean(0)
        np.testing.assert_allclose(proxies.proxies[p], mean / np.linalg.norm(mean), atol=1e-6)
    # literal inter-class test: another centroid at least as similar as the own one
    centroids = np.stack([features[labels == c].mean(0) for c in (0, 1)])
    centroids /= np.linalg.norm(centroids, axis=1, keepdims=True)
    sims = features[:16] @ centroids.T
    np.testing.assert_array_equal(proxies.inter_hard[:16], sims[np.arange(16), 1 - labels[:16]] > sims[np.arange(16),
                                                                                                      labels[:16]])
    assert proxies.stats() == {"hard_samples": int(proxies.hard.sum()), "intra_hard": 5,
                               "inter_hard": int(proxies.inter_hard.sum()), "hard_proxies": 3, "split_clusters": 1}
    # a threshold wider than the two modes' distance keeps the cluster whole
    whole = secondary_clustering(features, labels, sub_distance=1.9, min_size=4)
    assert len(whole.proxies) == 2 and not whole.intra_hard.any()


def test_split_oversized_relabels_only_clusters_far_above_the_median_size():
    """Clusters 0 (3 members), 1 (3) and 3 (4) are of a normal size; cluster 2 (12, chained) holds three
    sub-clusters. At factor 2 (bound 2 × median 3.5 = 7) only cluster 2 comes apart into three labels."""
    labels = np.array([0, 0, 0, 1, 1, 1] + [2] * 12 + [3] * 4 + [-1])
    groups = {0: [[0, 1, 2]], 1: [[3, 4, 5]], 2: [[6, 7, 8, 9], [10, 11, 12, 13], [14, 15, 16, 17]],
              3: [[18, 19, 20, 21]]}
    assignment, owners = np.full(len(labels), -1), []
    for cluster, subs in groups.items():
        for members in subs:
            assignment[members] = len(owners)
            owners.append(cluster)
    proxies = HardProxies(np.eye(len(owners), dtype=np.float32), np.array(owners), assignment,
                          np.zeros(len(labels), bool), np.zeros(len(labels), bool))
    new, moved, split = split_oversized(labels, proxies, 2.0)
    assert split == 1
    expected = [0, 0, 0, 1, 1, 1] + [3] * 4 + [4] * 4 + [5] * 4 + [2] * 4 + [-1]  # np.unique order: 0, 1, 3, 2's
    assert new.tolist() == expected
    assert moved.owners.tolist() == [0, 1, 3, 4, 5, 2]  # each proxy is owned by the label its members now carry
    np.testing.assert_array_equal(moved.assignment, assignment)  # the proxies themselves are unchanged
    same, untouched, none = split_oversized(labels, proxies, 4.0)  # bound 14: no cluster is oversized
    assert none == 0 and same is labels and untouched is proxies
    with pytest.raises(ValueError, match="split_oversized needs dsfnet.scnet.split: false"):
        SCNetConfig(split=True, split_oversized=4.0).check()
    with pytest.raises(ValueError, match="split_oversized must be 0 \\(off\\) or > 1"):
        SCNetConfig(split=False, split_oversized=0.5).check()


@pytest.mark.parametrize("sibling_negatives", [True, False])
def test_split_labels_mask_sibling_sub_clusters_unless_they_are_negatives(sibling_negatives):
    torch.manual_seed(4)
    # 3 primary clusters split into 6 sub-clusters: owners [0, 0, 0, 1, 2, 2]
    owners = np.array([0, 0, 0, 1, 2, 2])
    labels = np.repeat(np.arange(6), 3)
    feats = F.normalize(torch.randn(18, 8), dim=1).numpy()
    branches = {"global": feats, "parts": None, "fused": None}
    from dsfnet.cluster.scnet import HardProxies

    hard = np.zeros(18, dtype=bool)
    proxies = HardProxies(feats[::3], owners, labels.copy(), hard, hard)
    config = DSFNetConfig(FINetConfig(enabled=False), SCNetConfig(sibling_negatives=sibling_negatives, lambda_hard=0),
                          DDOConfig(enabled=False))
    objective = DSFNetObjective(branches, labels, config, temperature=0.1, proxies=proxies).eval()
    inputs, targets = torch.randn(4, 8), torch.tensor([0, 2, 3, 5])
    loss = objective.main(inputs, targets)
    logits = F.normalize(inputs, dim=1) @ objective.main.features.T / 0.1
    expected = []
    for i, t in enumerate(targets.tolist()):
        allowed = [c for c in range(6) if sibling_negatives or c == t or owners[c] != owners[t]]
        expected.append(-torch.log_softmax(logits[i, allowed], dim=0)[allowed.index(t)])
    assert float(loss) == pytest.approx(float(torch.stack(expected).mean()), rel=1e-5)


def test_rejoin_views_merges_only_sub_clusters_from_cameras_the_core_never_saw():
    # one cluster, three modes: a core (6, cameras 0 and 1), a mode seen only by camera 2 (a view of the
    # same person) and a mode seen by camera 1 (shared with the core: another person in a camera the core has)
    features = np.concatenate([_around([1, 0, 0, 0], 6, 0), _around([0, 1, 0, 0], 4, 1),
                               _around([0, 0, 1, 0], 4, 2)])
    labels = np.zeros(14, dtype=np.int64)
    camids = np.array([0, 1, 0, 1, 0, 1] + [2] * 4 + [1, 3, 3, 3])
    split = secondary_clustering(features, labels, sub_distance=0.5, min_size=4)
    assert len(split.proxies) == 3
    merged = secondary_clustering(features, labels, sub_distance=0.5, min_size=4, camids=camids)
    groups = [np.flatnonzero(merged.assignment == p).tolist() for p in range(len(merged.proxies))]
    assert groups == [list(range(10)), list(range(10, 14))]
    np.testing.assert_array_equal(np.flatnonzero(merged.intra_hard), np.arange(10, 14))
    core_mean = features[:10].mean(0)
    np.testing.assert_allclose(merged.proxies[0], core_mean / np.linalg.norm(core_mean), atol=1e-6)
    with pytest.raises(ValueError, match="camids"):
        secondary_clustering(features, labels, camids=camids[:5])


@pytest.mark.parametrize("hard_negatives", [0, 2])
def test_all_positives_average_the_log_likelihood_of_every_own_proxy(hard_negatives):
    """CAP's inter-camera loss: -1/|P| sum_p log(exp(x.p/t) / sum_{P+N} exp(x.q/t)), P the own cluster's proxies,
    N every other proxy or (hard_negatives=k) the k most similar ones."""
    torch.manual_seed(3)
    proxies = F.normalize(torch.randn(7, 8), dim=1)
    owners = torch.tensor([0, 0, 1, 1, 1, 2, 2])
    memory = HardProxyMemory(proxies, owners, temperature=0.1, momentum=0.5, positive="all",
                             hard_negatives=hard_negatives)
    inputs = torch.randn(4, 8, requires_grad=True)
    proxy_targets = torch.tensor([3, 0, 6, 2])
    loss = memory(inputs, proxy_targets)
    x = F.normalize(inputs.detach(), dim=1)
    expected = []
    for i, proxy in enumerate(proxy_targets.tolist()):
        sims = (x[i] @ proxies.T / 0.1).double()
        own = [j for j in range(7) if owners[j] == owners[proxy]]
        negatives = sorted((j for j in range(7) if j not in own), key=lambda j: -float(sims[j]))
        kept = own + (negatives[:hard_negatives] if hard_negatives else negatives)
        log_z = torch.logsumexp(sims[kept], dim=0)
        expected.append(-sum(float(sims[j] - log_z) for j in own) / len(own))
    assert float(loss.detach()) == pytest.approx(float(np.mean(expected)), rel=1e-5)
    loss.backward()
    assert torch.isfinite(inputs.grad).all()
    torch.testing.assert_close(memory.features[6], F.normalize(0.5 * proxies[6] + 0.5 * x[2], dim=0))


def test_camera_secondary_clustering_makes_one_proxy_per_camera_of_each_cluster():
    features = _unit([1, 0], [1, .1], [1, .2], [.9, .1], [0, 1], [.1, 1], [.2, 1])
    labels = np.array([0, 0, 0, 0, 1, 1, -1])
    camids = np.array([2, 0, 2, 0, 1, 1, 0])
    camera = secondary_clustering(features, labels, camids=camids, by_camera=True)
    groups = [np.flatnonzero(camera.assignment == p).tolist() for p in range(len(camera.proxies))]
    assert groups == [[1, 3], [0, 2], [4, 5]]  # cluster 0: cameras 0 then 2 (2 each: lower camid first); cluster 1
    assert camera.owners.tolist() == [0, 0, 1] and camera.assignment[6] == -1
    np.testing.assert_array_equal(np.flatnonzero(camera.intra_hard), [0, 2])  # outside the cluster's first view
    mean = features[[1, 3]].mean(0)
    np.testing.assert_allclose(camera.proxies[0], mean / np.linalg.norm(mean), atol=1e-6)
    with pytest.raises(ValueError, match="camera of every sample"):
        secondary_clustering(features, labels, by_camera=True)


def test_camera_secondary_clustering_reaches_the_trainer_and_refuses_a_split():
    from dsfnet.cluster import ClusterConfig
    from dsfnet.trainer import pseudo_labels

    features = np.concatenate([_around([1, 0, 0, 0], 8, 0), _around([0, 1, 0, 0], 8, 1)])
    camids = np.array([0, 1] * 8)
    cluster = ClusterConfig(k1=8, k2=1, eps=0.5, min_samples=2, camera_norm=False)
    method = DSFNetConfig(FINetConfig(enabled=False), SCNetConfig(secondary="camera", split=False, positive="all"),
                          DDOConfig(enabled=False))
    got = pseudo_labels({"global": features, "parts": None, "fused": None}, cluster, method, 0, 1, camids)
    assert len(np.unique(got.labels)) == 2  # the labels stay DBSCAN's
    assert len(got.proxies.proxies) == 4 and got.proxies.owners.tolist() == [0, 0, 1, 1]
    assert all(len(np.unique(camids[got.proxies.assignment == p])) == 1 for p in range(4))
    with pytest.raises(ValueError, match="secondary: camera needs dsfnet.scnet.split: false"):
        SCNetConfig(secondary="camera").check()
    with pytest.raises(ValueError, match="secondary: camera"):
        pseudo_labels({"global": features, "parts": None, "fused": None}, cluster, method, 0, 1, None)


def test_rejoin_views_reaches_the_trainers_pseudo_labels():
    from dsfnet.cluster import ClusterConfig, cluster_features
    from dsfnet.trainer import pseudo_labels

    # the same three modes, close enough for DBSCAN to chain them into one primary cluster
    features = np.concatenate([_around([1, .4, .4, 0], 6, 0), _around([.4, 1, .4, 0], 4, 1),
                               _around([.4, .4, 1, 0], 4, 2)])
    camids = np.array([0, 1, 0, 1, 0, 1] + [2] * 4 + [1, 3, 3, 3])
    branches = {"global": features, "parts": None, "fused": None}
    cluster = ClusterConfig(k1=13, k2=1, eps=0.9, min_samples=2, camera_norm=False)
    primary = cluster_features(features, cluster).labels
    assert primary.tolist() == [0] * 14
    for rejoin, expected in ((False, 3), (True, 2)):
        method = DSFNetConfig(FINetConfig(enabled=False), SCNetConfig(sub_distance=0.2, rejoin_views=rejoin),
                              DDOConfig(enabled=False))
        got = pseudo_labels(branches, cluster, method, 0, 1, camids)
        reference = secondary_clustering(features, primary, 0.2, 4, camids=camids if rejoin else None)
        np.testing.assert_array_equal(got.labels, reference.assignment)
        assert len(np.unique(got.labels)) == expected
    with pytest.raises(ValueError, match="rejoin_views"):
        pseudo_labels(branches, cluster, method, 0, 1, None)


def test_split_oversized_reaches_the_trainers_labels_and_trains(monkeypatch):
    import dsfnet.trainer as trainer
    from dsfnet.cluster import ClusterConfig
    from dsfnet.cluster.dbscan import PseudoLabels
    from dsfnet.models import ReIDOutput

    # four normal clusters of 4 and one DBSCAN chained out of three separate modes (12 samples)
    modes = np.eye(8, dtype=np.float32)
    features = np.concatenate([_around(modes[m], 4, m, spread=0.02) for m in range(7)])
    dbscan = np.array([0] * 4 + [1] * 4 + [2] * 4 + [3] * 4 + [4] * 12)
    timings = {"knn_s": 0.0, "jaccard_s": 0.0, "dbscan_s": 0.0}
    monkeypatch.setattr(trainer, "cluster_features", lambda x, config, camids=None: PseudoLabels(dbscan, timings))
    branches = {"global": features, "parts": None, "fused": None}
    cluster = ClusterConfig(camera_norm=False)
    method = DSFNetConfig(FINetConfig(enabled=False), SCNetConfig(split=False, split_oversized=2.0, sub_distance=0.5),
                          DDOConfig(enabled=False))
    got = trainer.pseudo_labels(branches, cluster, method, 0, 1)
    np.testing.assert_array_equal(got.labels[:16], dbscan[:16])  # clusters of a normal size keep their labels
    chained = got.labels[16:].reshape(3, 4)  # one mode per row: each its own label, 4, 5 and 6 in some order
    assert (chained == chained[:, :1]).all() and sorted(chained[:, 0]) == [4, 5, 6]
    assert got.extra["oversized_split"] == 1
    np.testing.assert_array_equal(got.proxies.owners[got.proxies.assignment], got.labels)  # each proxy: its label
    off = trainer.pseudo_labels(branches, cluster, replace(method, scnet=replace(method.scnet, split_oversized=0.0)),
                                0, 1)
    np.testing.assert_array_equal(off.labels, dbscan)  # without it the chained cluster stays one label
    objective = DSFNetObjective(branches, got.labels, method, proxies=got.proxies)
    batch = torch.from_numpy(features[[0, 16, 20, 24]])
    loss, terms = objective(ReIDOutput(batch, None, batch, None), torch.from_numpy(got.labels[[0, 16, 20, 24]]),
                            torch.from_numpy(got.proxies.assignment[[0, 16, 20, 24]]))
    assert torch.isfinite(loss) and "loss_hard" in terms


def test_secondary_clustering_keeps_outliers_out_and_checks_its_input():
    features = _unit([1, 0], [1, .1], [0, 1], [.1, 1], [1, 1])
    proxies = secondary_clustering(features, np.array([0, 0, 1, 1, -1]), min_size=1)
    assert proxies.assignment[4] == -1 and not proxies.hard[4]
    with pytest.raises(ValueError, match="every label is -1"):
        secondary_clustering(features, np.full(5, -1))
    with pytest.raises(ValueError, match="dsfnet.scnet.linkage"):
        secondary_clustering(features, np.array([0, 0, 1, 1, -1]), linkage="single")


def test_fused_distance_equals_the_dense_weighted_mix(make_clustered):
    features, _ = make_clustered(num_ids=8, per_id=6, dim=16, noise=0.4)
    parts = [make_clustered(num_ids=8, per_id=6, dim=16, noise=0.6, seed=s)[0] for s in (1, 2)]
    distances = [jaccard_distance(x, k1=8, k2=3) for x in (features, *parts)]

    def dense(d: sp.csr_matrix) -> np.ndarray:
        out = np.ones(d.shape)
        coo = d.tocoo()
        out[coo.row, coo.col] = coo.data
        return out

    mixed = fuse_distances(distances, [0.6, 0.2, 0.2])
    expected = 0.6 * dense(distances[0]) + 0.2 * dense(distances[1]) + 0.2 * dense(distances[2])
    np.testing.assert_allclose(dense(mixed), expected, atol=1e-6)
    with pytest.raises(ValueError, match="sum to 1"):
        fuse_distances(distances[:2], [0.5, 0.6])


def test_neighbourhood_agreement_and_lambda_schedule():
    a = np.array([[0, 1, 2], [1, 2, 3]])
    b = np.array([[0, 2, 5], [1, 4, 6]])
    assert neighbourhood_agreement(a, b) == pytest.approx((2 / 3 + 1 / 3) / 2)
    schedule = DDOConfig(lambda_mode="schedule", lambda_start=0.5, lambda_end=0.1)
    assert dynamic_lambda(schedule, 0, 11, 0.9) == pytest.approx(0.5)
    assert dynamic_lambda(schedule, 10, 11, 0.9) == pytest.approx(0.1)
    assert dynamic_lambda(DDOConfig(lambda_mode="agreement", lambda_max=0.4), 3, 11, 0.75) == pytest.approx(0.3)
    with pytest.raises(ValueError, match="dsfnet.ddo.lambda_mode"):
        DDOConfig(lambda_mode="cosine").check()


def test_ddo_base_global_clusters_on_the_global_feature_and_scnet_follows_it(make_clustered):
    """`ddo.base: global`: DDO's first term and SCNet's sub-clusters use g, not the fused feature."""
    from sklearn.metrics import adjusted_rand_score

    from dsfnet.cluster import ClusterConfig
    from dsfnet.cluster.ddo import cluster_fused
    from dsfnet.trainer import pseudo_labels

    global_, ids = make_clustered(num_ids=6, per_id=5, dim=16, noise=0.3)
    structureless, _ = make_clustered(num_ids=30, per_id=1, dim=48, noise=0.0, seed=5)  # one "identity" per sample
    parts = np.stack([global_, global_], axis=1)  # parts agree with g: the mixed distance is g's Jaccard
    branches = {"global": global_, "parts": parts, "fused": structureless}
    cluster = ClusterConfig(k1=6, k2=2, eps=0.6, min_samples=2, camera_norm=False)
    got = {}
    for base in ("global", "fused"):
        method = DSFNetConfig(FINetConfig(enabled=False), SCNetConfig(split=False, sub_distance=0.5),
                              DDOConfig(base=base))
        assert method.clustered_branch == base
        got[base] = pseudo_labels(branches, cluster, method, 0, 1)
        reference = cluster_fused(branches[base], parts, cluster, method.ddo, 0, 1)
        np.testing.assert_array_equal(got[base].labels, reference.pseudo.labels)
        proxies = secondary_clustering(branches[base], got[base].labels, 0.5, method.scnet.min_sub_size)
        np.testing.assert_array_equal(got[base].proxies.assignment, proxies.assignment)
    assert adjusted_rand_score(ids, got["global"].labels) == pytest.approx(1.0)  # g's identities, found
    assert adjusted_rand_score(ids, got["fused"].labels) < 0.5  # the structureless fused feature mixes them up
    with pytest.raises(ValueError, match="dsfnet.ddo.base"):
        DDOConfig(base="parts").check()


def test_ddo_same_camera_part_pairs_leave_cross_camera_pairs_to_the_first_term(make_clustered):
    """`ddo.part_pairs: same_camera`: the mixed distance within a camera, the first term's across cameras."""
    from dsfnet.cluster import ClusterConfig
    from dsfnet.cluster.dbscan import dbscan_labels, within
    from dsfnet.cluster.ddo import cluster_fused, fuse_distances, same_camera_only
    from dsfnet.cluster.jaccard import jaccard_distance

    fused, _ = make_clustered(num_ids=6, per_id=6, dim=16, noise=0.4)
    rng = np.random.default_rng(3)
    camids = np.tile(np.arange(3), 12)
    # camera-bound stripes: each part is mostly its camera's direction, so its neighbours share the camera
    camera_axes = rng.normal(size=(3, 16))
    parts = np.stack([fused + 2.0 * camera_axes[camids] + 0.2 * rng.normal(size=fused.shape) for _ in range(2)], 1)
    parts /= np.linalg.norm(parts, axis=-1, keepdims=True)
    first = jaccard_distance(fused, 8, 3)
    mixed = fuse_distances([first] + [jaccard_distance(parts[:, p], 8, 3) for p in range(2)], [0.6, 0.2, 0.2])
    got = same_camera_only(mixed, first, camids).toarray()
    dense_first, dense_mixed = (np.ones(got.shape), np.ones(got.shape))  # absent entries mean distance 1
    dense_first[first.nonzero()] = first[first.nonzero()].A1
    dense_mixed[mixed.nonzero()] = mixed[mixed.nonzero()].A1
    got[got == 0] = 1.0  # absent in the sparse result: distance 1 (no pair here is at distance exactly 0)
    np.fill_diagonal(dense_first, 0.0), np.fill_diagonal(dense_mixed, 0.0), np.fill_diagonal(got, 0.0)
    same = camids[:, None] == camids[None, :]
    expected = np.where(same, dense_mixed, dense_first)
    np.testing.assert_allclose(got, expected, atol=1e-12)
    assert not np.allclose(dense_mixed[~same], dense_first[~same])  # the part term did move cross-camera pairs

    cluster = ClusterConfig(k1=8, k2=3, eps=0.6, min_samples=2, camera_norm=False)
    ddo = DDOConfig(lambda_mode="schedule", lambda_start=0.4, lambda_end=0.4, part_pairs="same_camera")
    result = cluster_fused(fused, parts, cluster, ddo, 0, 2, camids)
    reference = dbscan_labels(within(same_camera_only(mixed, first, camids), 0.6), 0.6, 2)
    np.testing.assert_array_equal(result.pseudo.labels, reference)
    with pytest.raises(ValueError, match="same_camera needs the camera"):
        cluster_fused(fused, parts, cluster, ddo, 0, 2)
    with pytest.raises(ValueError, match="dsfnet.ddo.part_pairs"):
        DDOConfig(part_pairs="cross_camera").check()


def test_pairwise_precision_and_recall_count_pairs():
    rng = np.random.default_rng(0)
    labels = rng.integers(-1, 4, size=40)
    truth = rng.integers(0, 5, size=40)
    same_cluster = same_id = both = 0
    for i, j in itertools.combinations(range(40), 2):
        clustered = labels[i] >= 0 and labels[i] == labels[j]
        same_cluster += clustered
        same_id += truth[i] == truth[j]
        both += clustered and truth[i] == truth[j]
    quality = label_quality(labels, truth)
    assert quality["pair_precision"] == pytest.approx(both / same_cluster)
    assert quality["pair_recall"] == pytest.approx(both / same_id)


def test_objective_is_the_weighted_sum_of_its_terms():
    torch.manual_seed(3)
    n, dim, parts = 24, 8, 2
    labels = np.repeat(np.arange(4), 6)
    branches = {"global": F.normalize(torch.randn(n, dim), dim=1).numpy(),
                "parts": F.normalize(torch.randn(n, parts, dim), dim=2).numpy(),
                "fused": F.normalize(torch.randn(n, dim), dim=1).numpy()}
    config = DSFNetConfig(FINetConfig(global_weight=0.5, part_weight=2.0), SCNetConfig(lambda_hard=0.25, split=False),
                          DDOConfig())
    # proxies found on another feature (as on camera-normalised ones): the memory starts from the main feature
    proxies = secondary_clustering(branches["global"], labels, sub_distance=0.8, min_size=2)
    assert len(proxies.owners) > 4  # some clusters split: several proxies per cluster
    with pytest.raises(ValueError, match="sub-cluster assignment"):
        DSFNetObjective(branches, labels, DSFNetConfig(), proxies=proxies)
    objective = DSFNetObjective(branches, labels, config, temperature=0.05, proxies=proxies).eval()
    for k in range(len(proxies.owners)):
        members = torch.from_numpy(branches["fused"][proxies.assignment == k])
        torch.testing.assert_close(objective.hard.features[k], F.normalize(members.mean(0), dim=0))
    from dsfnet.models import ReIDOutput

    out = ReIDOutput(torch.randn(5, dim), torch.randn(5, parts, dim), F.normalize(torch.randn(5, dim), dim=1), None)
    targets = torch.tensor([0, 1, 1, 3, 2])
    proxy_targets = torch.from_numpy(proxies.assignment[[0, 6, 7, 18, 12]])
    total, terms = objective(out, targets, proxy_targets)
    expected = terms["loss_main"] + 0.5 * terms["loss_global"] + 2.0 * terms["loss_parts"] + 0.25 * terms["loss_hard"]
    assert float(total) == pytest.approx(expected, rel=1e-6)
    centroid = F.normalize(torch.from_numpy(branches["fused"][labels == 1]).mean(0), dim=0)
    torch.testing.assert_close(objective.main.features[1], centroid)  # FINet: the main memory holds fused features
    part_loss = np.mean([float(F.cross_entropy(F.normalize(out.parts[:, p], dim=1)
                                               @ objective.part_memories[p].features.T / 0.05, targets))
                         for p in range(parts)])
    assert terms["loss_parts"] == pytest.approx(part_loss, rel=1e-5)
    baseline = DSFNetObjective(branches, labels, DSFNetConfig.baseline()).eval()
    total, terms = baseline(out, targets)
    assert set(terms) == {"loss_main"} and float(total) == pytest.approx(terms["loss_main"])


def test_global_retrieval_trains_parts_as_auxiliary_terms_and_retrieves_the_global_feature():
    """`finet.retrieval: global` (PPLR's reading): part branches and their losses, no integration head, and the
    global feature is the main loss's, SCNet's and retrieval's."""
    method = DSFNetConfig(FINetConfig(retrieval="global", part_weight=2.0), SCNetConfig(split=False),
                          DDOConfig(enabled=False))
    assert not method.fuses and method.num_parts == 2
    torch.manual_seed(0)
    model = build_model(ModelConfig(), method).eval()
    assert model.integration is None and len(model.part_necks) == 2 and model.embedding_dim == 512
    check_model_matches(model, method)
    with pytest.raises(ValueError, match="fuse_parts=True.*fuse_parts=False"):
        check_model_matches(build_model(ModelConfig(), DSFNetConfig()), method)
    images = torch.randn(3, 3, 64, 32)
    torch.testing.assert_close(model(images), F.normalize(model.branches(images).global_, dim=1))

    torch.manual_seed(4)
    n, dim = 24, 8
    labels = np.repeat(np.arange(4), 6)
    branches = {"global": F.normalize(torch.randn(n, dim), dim=1).numpy(),
                "parts": F.normalize(torch.randn(n, 2, dim), dim=2).numpy(),
                "fused": F.normalize(torch.randn(n, dim), dim=1).numpy()}
    proxies = secondary_clustering(branches["global"], labels, sub_distance=0.8, min_size=2)
    objective = DSFNetObjective(branches, labels, method, proxies=proxies).eval()
    assert objective.main_key == "global" and objective.global_memory is None and len(objective.part_memories) == 2
    centroid = F.normalize(torch.from_numpy(branches["global"][labels == 2]).mean(0), dim=0)
    torch.testing.assert_close(objective.main.features[2], centroid)
    from dsfnet.models import ReIDOutput

    out = ReIDOutput(torch.randn(5, dim), torch.randn(5, 2, dim), None, None)  # no fused feature is needed
    targets = torch.tensor([0, 1, 1, 3, 2])
    total, terms = objective(out, targets, torch.from_numpy(proxies.assignment[[0, 6, 7, 18, 12]]))
    assert set(terms) == {"loss_main", "loss_parts", "loss_hard"}
    main = float(F.cross_entropy(F.normalize(out.global_, dim=1) @ objective.main.features.T / 0.05, targets))
    assert terms["loss_main"] == pytest.approx(main, rel=1e-5)
    expected = terms["loss_main"] + 2.0 * terms["loss_parts"] + method.scnet.lambda_hard * terms["loss_hard"]
    assert float(total) == pytest.approx(expected, rel=1e-6)
    with pytest.raises(ValueError, match="dsfnet.finet.retrieval must be 'fused' or 'global', got 'parts'"):
        FINetConfig(retrieval="parts").check()


def test_camera_normalisation_removes_each_cameras_mean():
    from dsfnet.cluster.dbscan import camera_normalise

    rng = np.random.default_rng(4)
    features = rng.normal(size=(12, 5)).astype(np.float32)
    camids = np.array([0, 1, 2] * 4)
    out = camera_normalise(features, camids)
    for c in range(3):
        centred = features[camids == c] - features[camids == c].mean(0)
        np.testing.assert_allclose(out[camids == c], centred / np.linalg.norm(centred, axis=1, keepdims=True),
                                   rtol=1e-5, atol=1e-6)
    parts = rng.normal(size=(12, 2, 5)).astype(np.float32)  # (N, P, D): each part normalised on its own
    for p in range(2):
        np.testing.assert_allclose(camera_normalise(parts, camids)[:, p], camera_normalise(parts[:, p], camids),
                                   rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="camids"):
        camera_normalise(features, camids[:5])
