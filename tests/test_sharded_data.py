"""``data=webdataset`` (tar shards written by the webdataset library itself) and ``data=hf``
(a ``datasets`` DatasetDict saved to disk): the samples read back are the images written,
two training steps run from each, and a run stopped mid-epoch resumes to exactly the
parameters of an uninterrupted one, with two loader workers."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from metacontrast import trainer
from metacontrast.checkpoint import list_checkpoints, load_safe
from metacontrast.config import compose_config
from metacontrast.data import DatasetError, load_dataset
from metacontrast.plugins import PluginManager

from .conftest import TINY, Interrupted, interrupt_at

CLASSES, TRAIN_PER_CLASS, TEST_PER_CLASS, SIZE = 4, 16, 3, 16


def _samples(split: str) -> list[tuple[str, bytes, int, np.ndarray]]:
    """(key, PNG bytes, label, pixels) of a split: noisy images whose colour follows the class."""
    g = np.random.default_rng(0 if split == "train" else 1)
    out = []
    per_class = TRAIN_PER_CLASS if split == "train" else TEST_PER_CLASS
    for i in range(CLASSES * per_class):
        label = i % CLASSES
        base = np.array([70 * label, 255 - 50 * label, 30 * label])
        pixels = np.clip(base + g.integers(-40, 40, (SIZE, SIZE, 3)), 0, 255).astype(np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="PNG")
        out.append((f"{split}{i:05d}", buffer.getvalue(), label, pixels))
    return out


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    """train-000000..000003.tar (16 samples each) and test-000000.tar, by webdataset.TarWriter."""
    import webdataset as wds

    root = tmp_path_factory.mktemp("shards")
    train = _samples("train")
    for shard in range(4):
        with wds.TarWriter(str(root / f"train-{shard:06d}.tar")) as sink:
            for key, png, label, _ in train[shard * 16:(shard + 1) * 16]:
                sink.write({"__key__": key, "png": png, "cls": label})
    with wds.TarWriter(str(root / "test-000000.tar")) as sink:
        for key, png, label, _ in _samples("test"):
            sink.write({"__key__": key, "png": png, "cls": label})
    return root


@pytest.fixture(scope="module")
def saved_hf(tmp_path_factory) -> Path:
    """A DatasetDict (train, test) of PIL images and class labels, saved to disk."""
    import datasets

    features = datasets.Features({"img": datasets.Image(), "fine": datasets.ClassLabel(num_classes=CLASSES)})
    splits = {}
    for split in ("train", "test"):
        rows = _samples(split)
        splits[split] = datasets.Dataset.from_dict(
            {"img": [Image.open(io.BytesIO(png)) for _, png, _, _ in rows], "fine": [r[2] for r in rows]},
            features=features)
    root = tmp_path_factory.mktemp("hf") / "saved"
    datasets.DatasetDict(splits).save_to_disk(str(root))
    return root


SOURCES = {
    "webdataset": lambda root: ["data=webdataset", f"data.root={root}",
                                "data.shards.train='train-{000000..000003}.tar'", "data.shards.test=test-000000.tar"],
    "hf": lambda root: ["data=hf", f"data.root={root}", "data.hf.image=img", "data.hf.label=fine"],
}


@pytest.fixture
def source_root(request, shards, saved_hf) -> Path:
    return {"webdataset": shards, "hf": saved_hf}[request.param]


def _data_cfg(source: str, root: Path, *extra: str):
    return compose_config([*TINY, *SOURCES[source](root), f"data.image_size={SIZE}", "data.workers=0", "data.stream=false",
                           *extra]).data


@pytest.mark.parametrize("source_root, source", [("webdataset", "webdataset"), ("hf", "hf")],
                         indirect=["source_root"])
def test_the_samples_read_back_are_the_images_and_labels_written(source_root, source):
    data = load_dataset(_data_cfg(source, source_root))
    for split, images, labels in (("train", data.train_images, data.train_labels),
                                  ("test", data.test_images, data.test_labels)):
        written = _samples(split)
        assert images.shape == (len(written), 3, SIZE, SIZE) and data.num_classes == CLASSES
        for row, (_, _, label, pixels) in enumerate(written):  # written order is kept
            assert int(labels[row]) == label
            assert torch.equal(images[row], torch.from_numpy(pixels).permute(2, 0, 1)), (split, row)


def _train_cfg(source: str, root: Path, run_dir: Path, *extra: str):
    """16 steps (2 epochs of 8 batches of 8 images), shuffled, streamed, 2 loader workers."""
    return compose_config([*TINY, *SOURCES[source](root), f"data.image_size={SIZE}", "data.stream=true",
                           "data.workers=2", "encoder.hidden=8", "trainer.batch_size=8", "trainer.max_steps=16",
                           "trainer.epochs=2", "trainer.checkpoint_every=1", "trainer.keep_checkpoints=0",
                           "trainer.resume=auto", "evaluation.train_subset=16", "evaluation.baselines=[]",
                           f"trainer.run_dir={run_dir}", *extra])


@pytest.mark.parametrize("source_root, source", [("webdataset", "webdataset"), ("hf", "hf")],
                         indirect=["source_root"])
def test_two_steps_then_an_exact_resume_mid_epoch(source_root, source, tmp_path):
    two = trainer.fit(_train_cfg(source, source_root, tmp_path / "two", "trainer.max_steps=2"))
    assert two["steps"] == 2 and two["dataset"] == source

    straight = tmp_path / "straight"
    trainer.fit(_train_cfg(source, source_root, straight))
    resumed = tmp_path / "resumed"
    with pytest.raises(Interrupted):
        trainer.fit(_train_cfg(source, source_root, resumed), PluginManager(extra=[interrupt_at(6)]))
    stopped = load_safe(list_checkpoints(resumed / "checkpoints")[-1])
    assert stopped["position"]["epoch"] == 0 and stopped["position"]["batch"] == 5  # mid-epoch
    assert trainer.fit(_train_cfg(source, source_root, resumed))["steps"] == 16
    a = load_safe(list_checkpoints(straight / "checkpoints")[-1])
    b = load_safe(list_checkpoints(resumed / "checkpoints")[-1])
    assert a["position"] == b["position"]
    for name, value in a["model"].items():
        torch.testing.assert_close(b["model"][name], value, rtol=0, atol=0, msg=name)


def test_shard_mistakes_are_named(shards, tmp_path):
    with pytest.raises(DatasetError, match=r"data.shards.train: 3 of 5 shards do not exist, first: .*train-000004.tar"):
        load_dataset(_data_cfg("webdataset", shards, "data.shards.train='train-{000002..000006}.tar'"))
    (tmp_path / "notar-000000.tar").write_text("not a tar")
    with pytest.raises(DatasetError, match="notar-000000.tar is not a tar file"):
        load_dataset(_data_cfg("webdataset", shards, f"data.shards.train={tmp_path}/notar-000000.tar"))
    with pytest.raises(DatasetError, match=r"sample train00000 of .*train-000000.tar has no .label label"):
        load_dataset(_data_cfg("webdataset", shards, "data.shards.label=label"))


def test_hf_mistakes_are_named(saved_hf):
    with pytest.raises(DatasetError, match="data.hf.image: no column 'image' in split 'train'; columns: img, fine"):
        load_dataset(_data_cfg("hf", saved_hf, "data.hf.image=image"))
    with pytest.raises(DatasetError, match="data.hf.test: no split 'validation' .* splits: train, test"):
        load_dataset(_data_cfg("hf", saved_hf, "data.hf.test=validation"))


@pytest.mark.distributed
def test_two_ranks_share_each_epoch_of_the_shards_without_overlap(shards, tmp_path):
    """Under torchrun, each rank reads its own half of every global batch from the shards
    (two loader workers each), and an epoch covers every sample exactly once."""
    import json

    from .launch import launch_cli, output

    run_dir = tmp_path / "run"
    overrides = [*TINY, *SOURCES["webdataset"](shards), f"data.image_size={SIZE}", "data.stream=true",
                 "data.workers=2", "encoder.hidden=8", "trainer.batch_size=8", "trainer.max_steps=8",
                 "trainer.epochs=2", "evaluation.train_subset=16", "evaluation.baselines=[]",
                 f"trainer.run_dir={run_dir}"]
    done = launch_cli(overrides, nproc=2, record=str(tmp_path / "records"))
    assert done.returncode == 0, output(done)
    ranks = [[json.loads(r) for r in (tmp_path / "records" / f"rank{k}.jsonl").read_text().splitlines()]
             for k in (0, 1)]
    assert [r["step"] for r in ranks[0]] == [r["step"] for r in ranks[1]] == list(range(8))
    steps_per_epoch = CLASSES * TRAIN_PER_CLASS // 16
    for epoch in range(2):
        seen = []
        for step in range(epoch * steps_per_epoch, (epoch + 1) * steps_per_epoch):
            first, second = ranks[0][step]["index"], ranks[1][step]["index"]
            assert len(first) == len(second) == 8 and not set(first) & set(second)
            seen += first + second
        assert sorted(seen) == list(range(CLASSES * TRAIN_PER_CLASS)), epoch


def test_a_shards_index_is_kept_and_made_again_when_the_shard_changes(shards, tmp_path, monkeypatch):
    import shutil
    import tarfile

    from metacontrast.data import shards as shard_module

    monkeypatch.setenv("METACONTRAST_CACHE_DIR", str(tmp_path / "cache"))
    copy = tmp_path / "copy"
    shutil.copytree(shards, copy)
    pattern = "data.shards.train='train-{000000..000003}.tar'"
    first = load_dataset(_data_cfg("webdataset", copy, pattern))
    assert len(list((tmp_path / "cache" / "shard-index").glob("*.npz"))) == 5  # 4 train shards, 1 test

    def no_tar(*args, **kwargs):
        raise AssertionError("a shard was read again although its index is kept")

    monkeypatch.setattr(tarfile, "open", no_tar)
    again = load_dataset(_data_cfg("webdataset", copy, pattern))
    assert torch.equal(again.train_images, first.train_images) and torch.equal(again.train_labels, first.train_labels)
    monkeypatch.undo()
    monkeypatch.setenv("METACONTRAST_CACHE_DIR", str(tmp_path / "cache"))
    # a rewritten shard (the first, now holding 3 samples) is indexed again
    import webdataset as wds

    rows = _samples("train")[:3]
    with wds.TarWriter(str(copy / "train-000000.tar")) as sink:
        for key, png, label, _ in rows:
            sink.write({"__key__": key, "png": png, "cls": label})
    changed = load_dataset(_data_cfg("webdataset", copy, pattern))
    assert changed.train_images.shape[0] == 3 + 48
    assert shard_module.index_cache_dir() == tmp_path / "cache" / "shard-index"
