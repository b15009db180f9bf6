"""Dataset adapters: layouts, subsets, statistics and errors that name the file or key."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from metacontrast.config import DataConfig
from metacontrast.data import DatasetError, EpochBatchSampler, load_dataset


def _cfg(**kw):
    return OmegaConf.structured(DataConfig(**kw))


def test_digits_is_embedded_upsampled_and_split():
    d = load_dataset(_cfg(image_size=32))
    assert d.train_images.shape == (1297, 1, 32, 32) and d.test_images.shape == (500, 1, 32, 32)
    assert d.train_images.dtype == torch.uint8 and d.num_classes == 10
    assert int(d.train_images.max()) == 255
    x = d.train_images.float() / 255
    assert d.mean[0] == pytest.approx(x.mean().item(), rel=1e-5)


@pytest.mark.parametrize("layout", ["nhwc", "nchw", "nhw"])
def test_npz_layouts(tmp_path, layout):
    g = np.random.default_rng(0)
    shape = {"nhwc": (10, 8, 8, 3), "nchw": (10, 3, 8, 8), "nhw": (10, 8, 8)}[layout]
    path = tmp_path / "d.npz"
    np.savez(path, x_train=g.integers(0, 256, shape, dtype=np.uint8), y_train=np.arange(10) % 2,
             x_test=g.integers(0, 256, shape, dtype=np.uint8), y_test=np.arange(10) % 2)
    d = load_dataset(_cfg(name="npz", root=str(path), train_subset=6))
    c = 1 if layout == "nhw" else 3
    assert d.train_images.shape == (6, c, 8, 8) and d.test_images.shape == (10, c, 8, 8)


def test_npz_missing_arrays_and_bad_dtype(tmp_path):
    path = tmp_path / "d.npz"
    np.savez(path, x_train=np.zeros((2, 4, 4), np.uint8))
    with pytest.raises(DatasetError, match="lacks y_train, x_test, y_test"):
        load_dataset(_cfg(name="npz", root=str(path)))
    np.savez(path, x_train=np.zeros((2, 4, 4)), y_train=np.zeros(2), x_test=np.zeros((2, 4, 4)),
             y_test=np.zeros(2))
    with pytest.raises(DatasetError, match="uint8"):
        load_dataset(_cfg(name="npz", root=str(path)))


def test_unknown_dataset_and_missing_root():
    with pytest.raises(DatasetError, match="data.name: unknown dataset 'imagenet'; available:"):
        load_dataset(_cfg(name="imagenet"))
    with pytest.raises(DatasetError, match="data.root: /nowhere does not exist"):
        load_dataset(_cfg(name="cifar10", root="/nowhere"))


def test_imagefolder_corrupt_file_is_named(tmp_path):
    from PIL import Image

    for split in ("train", "test"):
        (tmp_path / split / "a").mkdir(parents=True)
        Image.new("RGB", (5, 5)).save(tmp_path / split / "a" / "ok.png")
    (tmp_path / "train" / "a" / "broken.png").write_bytes(b"not an image")
    with pytest.raises(DatasetError, match="broken.png"):
        load_dataset(_cfg(name="imagefolder", root=str(tmp_path), image_size=8))


def test_mean_std_must_match_channels():
    with pytest.raises(DatasetError, match="data.mean/data.std"):
        load_dataset(_cfg(mean=[0.5, 0.5], std=[0.2, 0.2]))


def test_sampler_ranks_partition_the_global_batch():
    one = EpochBatchSampler(20, 6, seed=3)
    two = [EpochBatchSampler(20, 3, seed=3, rank=r, world_size=2) for r in (0, 1)]
    for (i, whole), (_, a), (_, b) in zip(one.batches(1), two[0].batches(1), two[1].batches(1), strict=True):
        assert torch.equal(whole, torch.cat([a, b])), i
    assert one.steps_per_epoch == 3
    assert not torch.equal(one.epoch_order(0), one.epoch_order(1))
    assert [i for i, _ in one.batches(0, start=1)] == [1, 2]


@pytest.mark.data
def test_prepared_cifar10(prepared_data):
    d = load_dataset(_cfg(name="cifar10", root=str(prepared_data)))
    assert d.train_images.shape == (50000, 3, 32, 32) and d.test_images.shape == (10000, 3, 32, 32)
    assert d.num_classes == 10 and torch.bincount(d.test_labels).tolist() == [1000] * 10


@pytest.mark.data
def test_prepared_fashion_mnist_through_torchvision(prepared_data):
    d = load_dataset(_cfg(name="fashionmnist", root=str(prepared_data), test_subset=100))
    assert d.train_images.shape == (60000, 1, 28, 28) and d.test_images.shape == (100, 1, 28, 28)
