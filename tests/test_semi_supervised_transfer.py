"""Semi-supervised fine-tuning and transfer: subsets balanced, reproducible and saved;
no test image reaches training; validation-based selection never reads the test split."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from metacontrast.builtin.finetune import FineTuneSchedule, fine_tune, predict
from metacontrast.builtin.semi_supervised import (
    SemiSupervisedConfig,
    SemiSupervisedEvaluator,
    balanced_subset,
    fraction_name,
)
from metacontrast.builtin.transfer import (
    TransferConfig,
    TransferEvaluator,
    adapt_images,
    split_train_validation,
)
from metacontrast.classifiers import LinearProbeConfig, fit_linear_classifier
from metacontrast.data import ImageData
from metacontrast.evaluation import extract_features
from metacontrast.records import EvalInputs, Features


class _TinyEncoder(nn.Module):
    """Conv + BN + global pool; remembers every image it sees in training mode."""

    out_dim = 8

    def __init__(self, channels=3):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(channels, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                                 nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.trained_on: list[torch.Tensor] = []

    def forward(self, x):
        if self.training:
            self.trained_on.append(x.detach().clone())
        return self.net(x)


def _toy_data(n_train=90, n_test=30, channels=3, size=8, seed=0, name="toy"):
    """Class = brightness; pixel (0, 0) of channel 0 carries a unique id per image so an
    image can be recognised after normalisation (ids of train and test never collide)."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n_train + n_test) % 3
    x = (y.view(-1, 1, 1, 1) * 70 + 30 + 8 * torch.randn(n_train + n_test, channels, size, size, generator=g))
    x = x.clamp(0, 255).to(torch.uint8)
    x[:, 0, 0, 0] = torch.arange(n_train + n_test).to(torch.uint8)
    return ImageData(name=name, train_images=x[:n_train], train_labels=y[:n_train], test_images=x[n_train:],
                     test_labels=y[n_train:], num_classes=3, mean=(0.5,) * channels, std=(0.25,) * channels)


def _inputs(encoder, data, tmp_path=None):
    features = lambda x: extract_features(encoder, x, mean=data.mean, std=data.std, batch_size=64)  # noqa: E731
    return EvalInputs(encoder=encoder, data=data, train_index=torch.arange(data.train_labels.numel()),
                      features=features, seed=3, run_dir=tmp_path, batch_size=64)


def test_balanced_subset_is_balanced_reproducible_and_seed_dependent():
    labels = torch.tensor([0] * 500 + [1] * 300 + [2] * 200)[torch.randperm(1000, generator=torch.Generator().manual_seed(0))]
    one = balanced_subset(labels, 0.1, seed=0)
    counts = torch.bincount(labels[one], minlength=3)
    assert counts.tolist() == [33, 33, 33]  # round(0.1 * 1000 / 3)
    assert torch.equal(one, balanced_subset(labels, 0.1, seed=0))
    assert not torch.equal(one, balanced_subset(labels, 0.1, seed=1))
    assert one.unique().numel() == one.numel() and int(one.max()) < 1000
    tiny = balanced_subset(labels, 0.001, seed=0)  # at least one image a class
    assert torch.bincount(labels[tiny], minlength=3).tolist() == [1, 1, 1]
    assert fraction_name(0.01) == "1pct" and fraction_name(0.1) == "10pct" and fraction_name(0.005) == "0.5pct"


def test_semi_supervised_trains_only_on_the_saved_train_subset(tmp_path):
    data = _toy_data()
    encoder = _TinyEncoder()
    before = {k: v.clone() for k, v in encoder.state_dict().items()}
    ev = SemiSupervisedEvaluator(SemiSupervisedConfig(fractions=[0.1, 0.5], epochs=[2], batch_size=8), None)
    metrics = ev.run(_inputs(encoder, data, tmp_path))
    assert set(metrics) == {f"semi_supervised_{p}_top1" for p in ("10pct", "50pct")}  # 3 classes: no top-5
    # the pre-trained encoder is untouched (fine-tuning works on a copy)...
    assert all(torch.equal(before[k], v) for k, v in encoder.state_dict().items())
    # ...and each saved subset is class-balanced, reproducible and indexes the train split
    for fraction, name in ((0.1, "10pct"), (0.5, "50pct")):
        saved = json.loads((tmp_path / "labelled_subsets" / f"semi_supervised_{name}_seed3.json").read_text())
        assert saved["split"] == "train" and saved["fraction"] == fraction
        assert saved["indices"] == balanced_subset(data.train_labels, fraction, 3).tolist()


def test_semi_supervised_never_trains_on_a_test_image():
    data = _toy_data()
    seen_ids: set[int] = set()

    class Recording(_TinyEncoder):
        def forward(self, x):
            if self.training:  # fine-tuning copies the encoder: record through the class
                ids = (x[:, 0, 0, 0] * 0.25 + 0.5) * 255  # undo normalisation of the id pixel
                seen_ids.update(ids.round().long().tolist())
            return self.net(x)

    ev = SemiSupervisedEvaluator(SemiSupervisedConfig(fractions=[0.2], epochs=[3], batch_size=8, augment=False), None)
    ev.run(_inputs(Recording(), data))
    allowed = set(balanced_subset(data.train_labels, 0.2, 3).tolist())
    assert seen_ids and seen_ids <= allowed  # train ids are 0..89, test ids 90..119


def test_fine_tuning_learns_an_easy_problem():
    data = _toy_data(n_train=150, n_test=60)
    torch.manual_seed(0)
    model = fine_tune(_TinyEncoder(), data.train_images, data.train_labels, 3, mean=data.mean, std=data.std,
                      schedule=FineTuneSchedule(epochs=15, batch_size=32, lr=1.0, augment=False),
                      generator=torch.Generator().manual_seed(0))
    scores = predict(model, data.test_images, mean=data.mean, std=data.std, batch_size=32)
    assert (scores.argmax(1) == data.test_labels).float().mean() > 0.9


def test_adapt_images_converts_channels_and_size():
    grey = torch.randint(0, 256, (4, 1, 6, 6), dtype=torch.uint8)
    rgb = adapt_images(grey, 3, 6)
    assert rgb.shape == (4, 3, 6, 6) and torch.equal(rgb[:, 0], grey[:, 0]) and torch.equal(rgb[:, 2], grey[:, 0])
    colour = torch.randint(0, 256, (2, 3, 4, 4), dtype=torch.uint8)
    luma = adapt_images(colour, 1, 4)
    ref = (0.299 * colour[:, 0].double() + 0.587 * colour[:, 1].double() + 0.114 * colour[:, 2].double()).round()
    assert torch.equal(luma[:, 0].double(), ref)
    assert adapt_images(grey, 1, 12).shape == (4, 1, 12, 12)


def test_train_validation_split_is_disjoint_and_complete():
    fit, val = split_train_validation(103, 0.2, seed=5)
    assert val.numel() == 21 and fit.numel() == 82
    assert set(fit.tolist()).isdisjoint(val.tolist()) and set(fit.tolist()) | set(val.tolist()) == set(range(103))
    assert torch.equal(val, split_train_validation(103, 0.2, seed=5)[1])


def _npz(path, data: ImageData):
    np.savez(path, x_train=data.train_images.numpy(), y_train=data.train_labels.numpy(),
             x_test=data.test_images.numpy(), y_test=data.test_labels.numpy())
    return path


@pytest.mark.parametrize("protocol", ["linear", "finetune"])
def test_transfer_selects_on_validation_and_never_reads_test_labels(protocol, tmp_path):
    from metacontrast.interfaces import BuildContext

    source = _toy_data(channels=3, size=8)
    target = _toy_data(n_train=80, n_test=40, channels=1, size=12, seed=1, name="npz")
    context = BuildContext(in_channels=3, image_size=8, mean=source.mean, std=source.std)
    grid = {"weight_decays": [1e-4, 10.0, 1e3]} if protocol == "linear" else {
        "weight_decays": [0.0], "lrs": [1e-4, 0.5], "epochs": 3, "batch_size": 16}
    config = TransferConfig(data={"name": "npz", "root": str(_npz(tmp_path / "t.npz", target))},
                            protocol=protocol, **grid)
    torch.manual_seed(0)
    encoder = _TinyEncoder()
    ev = TransferEvaluator(config, context)
    assert ev.target.train_images.shape[1:] == (3, 8, 8)  # grey 12 px -> the encoder's RGB 8 px
    inputs = _inputs(encoder, source)
    metrics = ev.run(inputs)
    details = inputs.details["transfer_npz"]
    assert set(metrics) == {"transfer_npz_top1"}  # 3 classes: top-3 would be 100% by construction
    vals = [p["val_top1"] for p in details["grid"]]
    assert details["chosen"] == {k: v for k, v in details["grid"][int(np.argmax(vals))].items() if k != "val_top1"}
    if protocol == "linear":  # the validation scores, recomputed independently
        feats = extract_features(encoder, ev.target.train_images, mean=source.mean, std=source.std, batch_size=64)
        fit, val = split_train_validation(80, 0.2, seed=3)
        for point in details["grid"]:
            probe = fit_linear_classifier(Features(feats[fit], ev.target.train_labels[fit]), 3,
                                          LinearProbeConfig(weight_decay=point["weight_decay"]))
            acc = (probe.scores(feats[val]).argmax(1) == ev.target.train_labels[val]).float().mean().item()
            assert acc == pytest.approx(point["val_top1"])
    # scrambled test labels change the test score only, never the selection
    ev.target = ev.target.__class__(**{**{f: getattr(ev.target, f) for f in
                                          ("name", "train_images", "train_labels", "test_images",
                                           "num_classes", "mean", "std")},
                                       "test_labels": ev.target.test_labels.flip(0)})
    again = _inputs(encoder, source)
    ev.run(again)
    assert again.details["transfer_npz"]["grid"] == details["grid"]


def test_transfer_dataset_errors_name_the_key(tmp_path):
    from metacontrast.config import ConfigError, compose_config
    from metacontrast.trainer import fit

    from .conftest import TINY

    base = [o for o in TINY if not o.startswith("eval.")]
    cfg = compose_config([*base, "eval=[transfer]", f"trainer.run_dir={tmp_path / 'run'}"])
    with pytest.raises(ConfigError, match=r"eval\.transfer: data: data\.root: dataset 'fashionmnist' needs"):
        fit(cfg)
    cfg = compose_config([*base, "eval=[transfer]", "+eval.transfer.data.colour=1",
                          f"trainer.run_dir={tmp_path / 'run'}"])
    with pytest.raises(ConfigError, match=r"eval\.transfer: data: .*colour"):
        fit(cfg)
    assert not (tmp_path / "run").exists()
