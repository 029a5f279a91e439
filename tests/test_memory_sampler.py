import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dsfnet.data.loader import CameraAwarePKSampler
from dsfnet.label_stats import label_quality
from dsfnet.memory import ClusterMemory


def test_centroids_are_normalised_cluster_means_ignoring_outliers():
    feats = torch.tensor([[1.0, 0.0], [0.0, 1.0], [5.0, 5.0], [-1.0, 0.0]])
    memory = ClusterMemory.from_labels(feats, torch.tensor([0, 0, -1, 1]))
    expected = F.normalize(torch.tensor([[0.5, 0.5], [-1.0, 0.0]]), dim=1)
    torch.testing.assert_close(memory.features, expected)


def test_cluster_nce_and_sequential_momentum_update():
    torch.manual_seed(0)
    centroids = F.normalize(torch.randn(5, 8), dim=1)
    memory = ClusterMemory(centroids, temperature=0.05, momentum=0.1)
    inputs = torch.randn(3, 8, requires_grad=True)
    targets = torch.tensor([2, 2, 4])
    loss = memory(inputs, targets)
    x = F.normalize(inputs.detach(), dim=1)
    expected_loss = F.cross_entropy(x @ centroids.T / 0.05, targets)
    assert float(loss.detach()) == pytest.approx(float(expected_loss.detach()), rel=1e-6)
    loss.backward()  # the update must not break autograd
    assert inputs.grad is not None
    c2 = F.normalize(0.1 * centroids[2] + 0.9 * x[0], dim=0)
    c2 = F.normalize(0.1 * c2 + 0.9 * x[1], dim=0)
    torch.testing.assert_close(memory.features[2], c2)
    torch.testing.assert_close(memory.features[0], centroids[0])


def test_hardest_update_moves_each_centroid_once_towards_its_least_similar_batch_member():
    """Against a loop written like the reference's CM_Hard backward: per label, argmin of x·c, one update."""
    torch.manual_seed(3)
    centroids = F.normalize(torch.randn(6, 16), dim=1)
    memory = ClusterMemory(centroids, temperature=0.05, momentum=0.2, update="hardest")
    inputs = torch.randn(20, 16, requires_grad=True)
    targets = torch.tensor([3, 1, 3, 3, 0, 5, 1, 3, 2, 2, 0, 5, 5, 4, 3, 1, 1, 0, 2, 3])
    memory(inputs, targets).backward()
    x = F.normalize(inputs.detach(), dim=1)
    expected = centroids.clone()
    for label in targets.unique().tolist():
        members = [i for i in range(len(targets)) if targets[i] == label]
        hardest = min(members, key=lambda i: float(x[i] @ centroids[label]))
        expected[label] = F.normalize(0.2 * centroids[label] + 0.8 * x[hardest], dim=0)
    torch.testing.assert_close(memory.features, expected, rtol=0, atol=1e-6)
    momentum = ClusterMemory(centroids, momentum=0.2)
    momentum(inputs, targets)
    assert (momentum.features - memory.features).abs().max() > 1e-2  # a different rule, not a renamed one
    with pytest.raises(ValueError, match="memory update must be momentum or hardest, got 'median'"):
        ClusterMemory(centroids, update="median")


def test_train_memory_update_reaches_every_cluster_memory_and_a_bad_value_is_named():
    from dsfnet.config import DSFNetConfig
    from dsfnet.memory import hardest_update
    from dsfnet.objective import DSFNetObjective
    from pipeline.params import ParamsError, params_from_dict

    rng = np.random.default_rng(0)
    branches = {"global": rng.standard_normal((12, 8)).astype(np.float32),
                "parts": rng.standard_normal((12, 2, 8)).astype(np.float32)}
    branches["fused"] = branches["global"]
    labels = np.repeat(np.arange(3), 4)
    config = DSFNetConfig.baseline()
    config.finet.enabled = True
    objective = DSFNetObjective(branches, labels, config, memory_update="hardest")
    memories = [objective.main, objective.global_memory, *objective.part_memories]
    assert len(memories) == 4 and all(m.update_rule is hardest_update for m in memories)
    assert params_from_dict({"train": {"memory_update": "hardest"}}).train.memory_update == "hardest"
    with pytest.raises(ParamsError, match="train.memory_update must be one of"):
        params_from_dict({"train": {"memory_update": "hard"}})


def test_sampler_takes_k_per_identity_from_distinct_cameras_first():
    labels = [0] * 6 + [1] * 2
    camids = [0, 0, 0, 1, 2, 3] + [1, 1]
    sampler = CameraAwarePKSampler(labels, camids, num_instances=4, seed=3)
    order = list(sampler)
    assert len(order) == len(sampler) == 8
    for start in (0, 4):
        group = order[start : start + 4]
        group_labels = {labels[i] for i in group}
        assert len(group_labels) == 1
        if group_labels == {0}:
            assert len({camids[i] for i in group}) == 4  # four cameras available: one image each
        else:
            assert set(group) == {6, 7}  # a two-image cluster is repeated to K


def test_label_quality_purity():
    labels = np.array([0, 0, 0, 1, 1, -1])
    truth = np.array([5, 5, 6, 7, 7, 9])
    quality = label_quality(labels, truth)
    assert quality["purity"] == pytest.approx(4 / 5)
    assert label_quality(np.array([-1, -1]), np.array([1, 2]))["purity"] == 0.0


def test_training_stops_with_advice_when_dbscan_finds_no_cluster(tmp_path):
    from dsfnet.cluster import ClusterConfig, NoClusterError
    from dsfnet.data import SyntheticConfig, generate_synthetic
    from dsfnet.models import ModelConfig, build_model
    from dsfnet.trainer import TrainConfig, train

    data = generate_synthetic(tmp_path, SyntheticConfig(profile="tiny", height=32, width=16), progress=False)
    config = TrainConfig(epochs=1, iters=1, batch_size=8, height=32, width=16, workers=0)
    with pytest.raises(NoClusterError, match="try a larger cluster.eps"):
        train(build_model(ModelConfig()), data.train, config, ClusterConfig(k1=10, k2=3, eps=1e-6, min_samples=40),
              progress=False)


def test_cached_images_give_the_same_augmented_batches_as_decoding_each_time(tmp_path):
    from dsfnet.data import SyntheticConfig, generate_synthetic
    from dsfnet.data.loader import ImageDataset, split_deterministic
    from dsfnet.data.transforms import build_train_transform

    records = generate_synthetic(tmp_path, SyntheticConfig(profile="tiny"), progress=False).train[:6]
    transform = build_train_transform(32, 16)
    cache: dict = {}
    cached, plain = ImageDataset(records, transform, cache=cache), ImageDataset(records, transform)
    prefix, rest = split_deterministic(transform)
    assert [type(t).__name__ for t in prefix.transforms] == ["Resize"] and len(rest.transforms) == 6
    for _ in range(2):  # the first pass fills the cache, the second reads it
        for index in range(len(records)):
            torch.manual_seed(index)
            first = cached[index][0]
            torch.manual_seed(index)
            torch.testing.assert_close(first, plain[index][0], rtol=0, atol=0)
    assert len(cache) == len(records)
    with pytest.raises(ValueError, match="cache dict"):
        plain.preload()


def test_a_stacked_test_batch_equals_the_per_image_transform_bit_for_bit(tmp_path):
    """Feature passes over cached images convert a whole batch at once (bench/bench_cpu.py: 1.2-1.5 -> 0.4 s
    per 9,914 images); each pixel must go through the same float operations as ToTensor + Normalize one image
    at a time."""
    from dsfnet.data import SyntheticConfig, generate_synthetic
    from dsfnet.data.loader import ImageDataset
    from dsfnet.data.transforms import build_test_transform, build_train_transform

    records = generate_synthetic(tmp_path, SyntheticConfig(profile="tiny"), progress=False).train[:7]
    test = ImageDataset(records, build_test_transform(32, 16), cache={})
    assert test.stacks_batches
    picked = [5, 0, 3, 3]
    stacked = test.stacked_batch(picked)
    plain = ImageDataset(records, build_test_transform(32, 16))  # decodes each image, the per-image transform
    expected = torch.stack([plain[i][0] for i in picked])
    assert stacked.shape == (4, 3, 32, 16) and stacked.dtype == torch.float32 and stacked.is_contiguous()
    torch.testing.assert_close(stacked, expected, rtol=0, atol=0)
    assert not ImageDataset(records, build_test_transform(32, 16)).stacks_batches  # no cache
    train = ImageDataset(records, build_train_transform(32, 16), cache={})
    assert not train.stacks_batches  # random flips, crops and erasing are per image
    with pytest.raises(ValueError, match="ToTensor, Normalize"):
        train.stacked_batch([0])


def test_loader_workers_share_the_preloaded_cache_and_give_the_same_batches(tmp_path):
    """With train.workers > 0 the main process decodes every image once (threads) before the workers fork;
    the batches equal those of workers decoding every image themselves."""
    from dataclasses import replace

    import numpy as np

    from dsfnet.data import SyntheticConfig, generate_synthetic
    from dsfnet.trainer import TrainConfig, epoch_loader

    records = generate_synthetic(tmp_path, SyntheticConfig(profile="tiny"), progress=False).train[:24]
    labels = np.arange(24) // 4
    labels[5] = -1  # an outlier: not in this epoch's loader, so not preloaded
    config = TrainConfig(batch_size=8, num_instances=4, height=32, width=16, workers=2)
    cache: dict = {}
    shared = epoch_loader(records, labels, config, epoch=0, image_cache=cache)
    assert len(cache) == 23 and shared.multiprocessing_context is not None
    plain = epoch_loader(records, labels, replace(config, cache_images=False), epoch=0)

    def batches(loader):
        torch.manual_seed(7)  # the workers' seeds come from the main process's generator
        return list(loader)

    for got, want in zip(batches(shared), batches(plain), strict=True):
        for a, b in zip(got, want, strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert len(cache) == 23  # the workers read it; nothing was added in the main process


@pytest.mark.parametrize("workers", [0, 2])
def test_feature_pass_reads_the_trainers_image_cache_and_gives_the_same_features(tmp_path, workers):
    """Every epoch's clustering features come from the decoded-image cache the training batches fill (the test
    and train transforms share the resize): bit-identical to decoding each image again."""
    from dsfnet.data import SyntheticConfig, generate_synthetic
    from dsfnet.data.transforms import build_test_transform, build_train_transform
    from dsfnet.features import extract_branches
    from dsfnet.models import ModelConfig, build_model
    from dsfnet.trainer import TrainConfig, epoch_loader

    records = generate_synthetic(tmp_path, SyntheticConfig(profile="tiny"), progress=False).train[:20]
    model = build_model(ModelConfig(arch="resnet18"))
    plain = extract_branches(model, records, 32, 16, batch_size=8, workers=workers, progress=False)
    cache: dict = {}
    labels = np.arange(20) // 4
    list(epoch_loader(records, labels, TrainConfig(batch_size=8, num_instances=4, height=32, width=16),
                      epoch=0, image_cache=cache))  # training fills the cache first (the images it sampled)
    assert repr(build_test_transform(32, 16).transforms[0]) == repr(build_train_transform(32, 16).transforms[0])
    assert 0 < len(cache) < 20
    for _ in range(2):  # the first pass adds the images training did not sample, the second only reads
        cached = extract_branches(model, records, 32, 16, batch_size=8, workers=workers, progress=False, cache=cache)
        for name, value in plain.items():
            if value is not None:
                np.testing.assert_array_equal(cached[name], value)
    assert len(cache) == 20  # the same keys: no image decoded a second time
    # and the pass moves torch's generator as a loader pass does, so the augmentations after it are the same
    torch.manual_seed(3)
    extract_branches(model, records, 32, 16, batch_size=8, workers=workers, progress=False)
    after_loader = torch.get_rng_state()
    torch.manual_seed(3)
    extract_branches(model, records, 32, 16, batch_size=8, workers=workers, progress=False, cache=cache)
    assert torch.equal(torch.get_rng_state(), after_loader)
