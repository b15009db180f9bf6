"""Unreadable images in an ImageFolder: strict fails naming the file; skip warns once per
file, counts it, keeps batch shapes and DDP ranks in step, and stops above a fraction."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from metacontrast import trainer
from metacontrast.config import DataConfig, compose_config
from metacontrast.data import DatasetError, load_dataset
from metacontrast.data.files import BadFiles, ImageFiles, decode_all, stream_batches

from .conftest import TINY, add_bad_files, make_image_folder
from .launch import launch_cli, output


def _data(root: Path, **kw) -> OmegaConf:
    return OmegaConf.structured(DataConfig(name="imagefolder", root=str(root), image_size=8, **kw))


def _reference(path: Path, size: int = 8) -> torch.Tensor:
    """PIL, written out: RGB, bicubic resize, (C, H, W)."""
    with Image.open(path) as im:
        return torch.from_numpy(np.array(im.convert("RGB").resize((size, size), Image.Resampling.BICUBIC))).permute(2, 0, 1)


@pytest.mark.parametrize("kind", ["corrupt", "empty", "text"])
def test_strict_mode_fails_naming_the_file(tmp_path, kind):
    root = make_image_folder(tmp_path / "d")
    bad = add_bad_files(root / "train" / "c1")
    for other, path in bad.items():
        if other != kind:
            path.unlink()
    with pytest.raises(DatasetError, match=rf"{bad[kind]}: not a readable image .*data.bad_files=skip"):
        load_dataset(_data(root, workers=2))


def test_skip_mode_leaves_bad_files_out_and_warns_once_each(tmp_path, capsys):
    root = make_image_folder(tmp_path / "d")
    bad = add_bad_files(root / "train" / "c1")
    d = load_dataset(_data(root, workers=2, bad_files="skip", max_bad_fraction=0.2))
    assert d.train_images.shape == (24, 3, 8, 8) and d.test_images.shape == (6, 3, 8, 8)
    assert d.unreadable_files == sorted(str(p) for p in bad.values())
    err = capsys.readouterr().err
    for path in bad.values():
        assert err.count(f"skipping unreadable image {path}") == 1
    good = sorted((root / "train").rglob("*.png"))
    for i, path in enumerate(good):  # the decoded images are the files, in folder order
        assert torch.equal(d.train_images[i], _reference(path)), path
    assert torch.bincount(d.train_labels).tolist() == [8, 8, 8]


def test_skip_mode_stops_above_the_bad_fraction(tmp_path):
    root = make_image_folder(tmp_path / "d")
    add_bad_files(root / "train" / "c1")
    with pytest.raises(DatasetError, match=r"data.max_bad_fraction: 3 of 33 files are unreadable, more than 0.05"):
        load_dataset(_data(root, bad_files="skip", max_bad_fraction=0.05))


def test_unknown_mode_and_fraction_are_refused():
    with pytest.raises(DatasetError, match="data.bad_files: unknown mode 'lenient'"):
        BadFiles("lenient", 0.1, 10)
    with pytest.raises(DatasetError, match="data.max_bad_fraction: must be in"):
        BadFiles("skip", 1.5, 10)


def test_streamed_batches_keep_their_shape_and_warn_once_per_file(tmp_path, capsys):
    root = make_image_folder(tmp_path / "d", train_per_class=2)
    bad = add_bad_files(root / "train" / "c0")
    paths = sorted(str(p) for p in (root / "train").rglob("*") if p.is_file())
    files = ImageFiles(paths, [0] * len(paths), 8)
    policy = BadFiles("skip", 0.5, len(paths))
    plan = [(0, torch.arange(0, 5)), (1, torch.arange(5, 9))]
    for _ in range(2):  # two epochs over the same files
        out = list(stream_batches(files, plan, policy, workers=2))
        assert [i for i, _, _ in out] == [0, 1]
        for (_, images, idx), (_, want) in zip(out, plan, strict=True):
            assert images.shape == (len(want), 3, 8, 8) and torch.equal(idx, want)
            readable = [j for j, i in enumerate(want.tolist()) if not paths[i].endswith(".jpg")]
            for j, i in enumerate(want.tolist()):
                # a bad row holds the batch's first readable image
                source = i if j in readable else int(want[readable[0]])
                assert torch.equal(images[j], _reference(Path(paths[source]))), (j, paths[i])
    assert sorted(policy.found.values()) == sorted(str(p) for p in bad.values())
    err = capsys.readouterr().err
    assert all(err.count(f"skipping unreadable image {p}") == 1 for p in bad.values())


def test_decode_all_matches_per_file_decoding_with_and_without_workers(tmp_path):
    root = make_image_folder(tmp_path / "d", train_per_class=3)
    paths = sorted(str(p) for p in (root / "train").rglob("*.png"))
    files = ImageFiles(paths, list(range(len(paths))), 8)
    reference = torch.stack([_reference(Path(p)) for p in paths])
    for workers in (0, 2):
        images, kept = decode_all(files, BadFiles("strict", 0.0, len(paths)), workers, chunk=4)
        assert torch.equal(images, reference) and kept.tolist() == list(range(len(paths)))


def _train_overrides(root: Path, run_dir: Path) -> list[str]:
    return [*TINY, "data=imagefolder", f"data.root={root}", "data.image_size=16", "data.stream=true",
            "data.workers=2", "data.bad_files=skip", "data.max_bad_fraction=0.2", "encoder.hidden=8",
            "trainer.batch_size=4", "trainer.max_steps=6", "trainer.epochs=3", "evaluation.train_subset=12",
            "evaluation.baselines=[]", f"trainer.run_dir={run_dir}"]


def test_streamed_training_skips_bad_files_and_reports_them(tmp_path):
    root = make_image_folder(tmp_path / "d", train_per_class=3)
    bad = add_bad_files(root / "train" / "c2")
    results = trainer.fit(compose_config(_train_overrides(root, tmp_path / "run")))
    assert results["steps"] == 6 and results["train_images_for_eval"] <= 12
    assert results["unreadable_files"] == sorted(str(p) for p in bad.values())


@pytest.mark.distributed
def test_ddp_ranks_stay_in_step_over_bad_files(tmp_path):
    root = make_image_folder(tmp_path / "d", train_per_class=3)
    add_bad_files(root / "train" / "c2")
    run_dir = tmp_path / "run"
    done = launch_cli([*_train_overrides(root, run_dir), "trainer.epochs=6"], nproc=2)
    assert done.returncode == 0, output(done)
    results = json.loads((run_dir / "results.json").read_text())
    assert results["world_size"] == 2 and results["steps"] == 6
    assert len(results["unreadable_files"]) == 3  # found by either rank, shared by both
