"""Linear probe: solvers against scikit-learn and the ridge formula, the augmentation
against a literal bilinear loop and torchvision, configuration errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from metacontrast.builtin.linear_probe import LinearProbeEvaluator
from metacontrast.classifiers import (
    LinearProbeConfig,
    fit_closed_form,
    fit_linear_classifier,
    lr_factor,
    probe_objective,
)
from metacontrast.data import ImageData
from metacontrast.evaluation import extract_features, run_evaluators
from metacontrast.imageops import resized_crop_flip
from metacontrast.records import EvalInputs, Features


def _teacher_problem(n_train=2000, n_test=1000, dim=20, classes=5, noise=1.0, seed=0):
    """Labels = argmax of a random linear teacher plus Gaussian noise: linearly separable
    up to the noise, so the Bayes classifier is linear and sklearn's logistic regression
    is a fair yardstick."""
    g = torch.Generator().manual_seed(seed)
    teacher = torch.randn(dim, classes, generator=g)
    x = torch.randn(n_train + n_test, dim, generator=g)
    y = (x @ teacher + noise * torch.randn(n_train + n_test, classes, generator=g)).argmax(1)
    return Features(x[:n_train], y[:n_train]), Features(x[n_train:], y[n_train:])


def _sklearn_accuracy(train, test, c):
    from sklearn.linear_model import LogisticRegression

    mu, sd = train.x.mean(0), train.x.std(0)
    xs_tr, xs_te = ((train.x - mu) / sd).numpy(), ((test.x - mu) / sd).numpy()
    model = LogisticRegression(C=c, max_iter=5000, tol=1e-8).fit(xs_tr, train.y.numpy())
    return float((model.predict(xs_te) == test.y.numpy()).mean())


@pytest.mark.parametrize("solver", ["lbfgs", "sgd"])
def test_probe_matches_sklearn_logistic_regression_within_a_point(solver):
    train, test = _teacher_problem()
    c = 1.0
    # sklearn minimises C * sum CE + |W|^2 / 2; ours mean CE + wd / 2 |W|^2: wd = 1 / (C N)
    wd = 1.0 / (c * train.x.shape[0])
    config = LinearProbeConfig(solver=solver, weight_decay=wd, max_iter=500, epochs=60,
                               batch_size=256, lr=0.5, schedule="cosine")
    ours = LinearProbeEvaluator(config, None).evaluate(train, test)["linear_top1"]
    reference = _sklearn_accuracy(train, test, c)
    assert reference > 0.75  # the problem is learnable...
    assert abs(ours - reference) <= 0.01, (ours, reference)


def test_lbfgs_reaches_sklearn_optimum():
    """Beyond accuracy: the fitted weights are sklearn's (same objective, same optimum)."""
    from sklearn.linear_model import LogisticRegression

    train, _ = _teacher_problem(n_train=500, dim=6, classes=3)
    n = train.x.shape[0]
    probe = fit_linear_classifier(train, 3, LinearProbeConfig(weight_decay=1.0 / n, max_iter=500))
    xs = ((train.x - probe.mu) / probe.sd).numpy()
    sk = LogisticRegression(C=1.0, max_iter=5000, tol=1e-10).fit(xs, train.y.numpy())
    # softmax weights are defined up to a shift shared by all classes; compare centred ones
    ours_w = probe.w - probe.w.mean(0)
    np.testing.assert_allclose(ours_w.numpy(), sk.coef_ - sk.coef_.mean(0), atol=2e-3)


def _ridge_reference(x, y, classes, wd):
    """J with the squared loss as one stacked least-squares problem, solved by numpy:
    rows [X 1] -> onehot and sqrt(N wd) [I 0] -> 0 (the penalty leaves the bias free)."""
    n, d = x.shape
    a = np.zeros((n + d, d + 1))
    a[:n, :d], a[:n, d] = x, 1.0
    a[n:, :d] = np.sqrt(n * wd) * np.eye(d)
    t = np.zeros((n + d, classes))
    t[np.arange(n), y] = 1.0
    sol = np.linalg.lstsq(a, t, rcond=None)[0]
    return sol[:d].T, sol[d]


@pytest.mark.parametrize("wd", [0.0, 1e-3, 0.5])
def test_closed_form_is_the_ridge_solution(wd):
    train, _ = _teacher_problem(n_train=300, dim=8, classes=4, seed=3)
    xs = (train.x - train.x.mean(0)) / train.x.std(0)
    w, b = fit_closed_form(xs.double(), train.y, 4, weight_decay=wd)
    ref_w, ref_b = _ridge_reference(xs.double().numpy(), train.y.numpy(), 4, wd)
    np.testing.assert_allclose(w.numpy(), ref_w, atol=1e-9)
    np.testing.assert_allclose(b.numpy(), ref_b, atol=1e-9)


def test_closed_form_equals_iterative_solvers_on_the_convex_problem():
    train, _ = _teacher_problem(n_train=600, dim=10, classes=4, seed=4)
    common = {"loss": "squared", "weight_decay": 1e-2}
    exact = fit_linear_classifier(train, 4, LinearProbeConfig(solver="closed_form", **common))
    lbfgs = fit_linear_classifier(train, 4, LinearProbeConfig(solver="lbfgs", max_iter=500, **common))
    torch.testing.assert_close(lbfgs.w, exact.w, atol=1e-4, rtol=0)
    torch.testing.assert_close(lbfgs.b, exact.b, atol=1e-4, rtol=0)
    sgd = fit_linear_classifier(train, 4, LinearProbeConfig(solver="sgd", epochs=300, batch_size=600,
                                                            lr=0.4, momentum=0.0, schedule="constant",
                                                            **common))
    torch.testing.assert_close(sgd.w, exact.w, atol=2e-3, rtol=0)
    # and the optimum is a stationary point of J
    w = exact.w.clone().requires_grad_(True)
    b = exact.b.clone().requires_grad_(True)
    xs = (train.x - exact.mu) / exact.sd
    probe_objective(xs @ w.T + b, train.y, w, **common).backward()
    assert w.grad.abs().max() < 1e-5 and b.grad.abs().max() < 1e-5


def test_lr_schedules():
    assert lr_factor("cosine", 0, 10) == 1.0 and abs(lr_factor("cosine", 5, 10) - 0.5) < 1e-12
    assert lr_factor("linear", 5, 10) == 0.5 and lr_factor("constant", 9, 10) == 1.0


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"solver": "closed_form"}, "closed_form solves the squared loss"),
    ({"augment": True}, "augment.*solver=sgd"),
    ({"solver": "adam"}, "solver: unknown 'adam'"),
    ({"schedule": "step"}, "schedule: unknown"),
    ({"crop_scale": [0.5, 0.2]}, "crop_scale"),
])
def test_config_errors_name_the_key(kwargs, match):
    with pytest.raises(ValueError, match=match):
        LinearProbeConfig(**kwargs)


def _bilinear_loop(img, top, left, h, w, flip):
    """The crop-resize written pixel by pixel: output (u, v) samples the source at
    (top + (u + 0.5) h / H - 0.5, left + (v + 0.5) w / W - 0.5), clamped to the image."""
    _, height, width = img.shape
    out = torch.zeros_like(img)
    for u in range(height):
        for v in range(width):
            vv = width - 1 - v if flip else v
            sy = min(max(top + (u + 0.5) * h / height - 0.5, 0.0), height - 1.0)
            sx = min(max(left + (vv + 0.5) * w / width - 0.5, 0.0), width - 1.0)
            y0, x0 = int(np.floor(sy)), int(np.floor(sx))
            y1, x1 = min(y0 + 1, height - 1), min(x0 + 1, width - 1)
            fy, fx = sy - y0, sx - x0
            out[:, u, v] = ((1 - fy) * (1 - fx) * img[:, y0, x0] + (1 - fy) * fx * img[:, y0, x1]
                            + fy * (1 - fx) * img[:, y1, x0] + fy * fx * img[:, y1, x1])
    return out


def test_resized_crop_flip_matches_a_pixel_loop_and_torchvision():
    from torchvision.transforms.v2 import functional as TF

    g = torch.Generator().manual_seed(0)
    images = torch.rand(3, 2, 12, 12, generator=g)
    boxes = torch.tensor([[2.0, 3.0, 6.0, 8.0], [0.0, 0.0, 12.0, 12.0], [5.0, 1.0, 7.0, 10.0]])
    flip = torch.tensor([False, True, True])
    ours = resized_crop_flip(images, boxes, flip)
    for i in range(3):
        top, left, h, w = boxes[i].tolist()
        torch.testing.assert_close(ours[i], _bilinear_loop(images[i], top, left, h, w, bool(flip[i])),
                                   atol=1e-5, rtol=0)
        tv = TF.resized_crop(images[i], int(top), int(left), int(h), int(w), [12, 12], antialias=False)
        if flip[i]:
            tv = tv.flip(-1)
        # torchvision clamps to the crop, we to the image: they agree away from the crop's border
        torch.testing.assert_close(ours[i][:, 1:-1, 1:-1], tv[:, 1:-1, 1:-1], atol=1e-5, rtol=0)


class _Spy(nn.Module):
    """Mean colour per channel as features (unchanged in expectation by crops and flips);
    counts the images it encodes."""

    def __init__(self):
        super().__init__()
        self.seen = 0
        self.scale = nn.Parameter(torch.ones(1))

    def forward(self, x):
        self.seen += x.shape[0]
        return x.mean(dim=(2, 3)) * self.scale


def _image_data(n_train=60, n_test=30, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n_train + n_test) % 3
    base = (y.view(-1, 1, 1, 1) * 80 + 20).float()
    x = (base + 10 * torch.randn(n_train + n_test, 3, 8, 8, generator=g)).clamp(0, 255).to(torch.uint8)
    return ImageData(name="toy", train_images=x[:n_train], train_labels=y[:n_train],
                     test_images=x[n_train:], test_labels=y[n_train:], num_classes=3,
                     mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))


def test_augmented_probe_re_encodes_every_epoch_and_needs_the_encoder():
    data = _image_data()
    spy = _Spy()
    features = lambda x: extract_features(spy, x, mean=data.mean, std=data.std, batch_size=16)  # noqa: E731
    inputs = EvalInputs(encoder=spy, data=data, train_index=torch.arange(60), features=features)
    ev = LinearProbeEvaluator(LinearProbeConfig(solver="sgd", augment=True, epochs=8, batch_size=32,
                                                lr=2.0, crop_scale=[0.5, 1.0]), None)
    assert ev.NEEDS_ENCODER and not ev.PERIODIC
    metrics = run_evaluators({"linear": ev}, inputs)
    assert spy.seen == 60 + 30 + 8 * 60  # clean train + test once, the train set every epoch
    assert metrics["linear_top1"] > 0.9  # class = brightness survives crops and flips
    raw = EvalInputs(encoder=None, data=data, train_index=torch.arange(60), features=lambda x: x.float().flatten(1))
    assert run_evaluators({"linear": ev}, raw) == {}  # left out of the raw-pixel baseline


def test_second_probe_under_its_own_key(tmp_path):
    from metacontrast.config import compose_config
    from metacontrast.trainer import fit

    from .conftest import TINY

    cfg = compose_config([*TINY, "eval=[linear,linear_sgd]", "eval.linear_sgd.epochs=3",
                          "evaluation.baselines=[]", f"trainer.run_dir={tmp_path}"])
    metrics = fit(cfg)["metrics"]["pretrained"]
    assert {"linear_top1", "linear_sgd_top1"} <= set(metrics)


def test_checkpoint_eval_adds_and_switches_off_protocols(tmp_path):
    from metacontrast.checkpoint import list_checkpoints
    from metacontrast.config import compose_config
    from metacontrast.trainer import evaluate_checkpoint, fit

    from .conftest import TINY

    fit(compose_config([*TINY, "evaluation.baselines=[]", f"trainer.run_dir={tmp_path}"]))
    checkpoint = list_checkpoints(tmp_path / "checkpoints")[-1]
    results = evaluate_checkpoint(checkpoint, ["eval.linear=null", "eval.probe_sgd.name=linear",
                                               "eval.probe_sgd.solver=sgd", "eval.probe_sgd.epochs=2"])
    assert set(results["metrics"]["pretrained"]) == {"knn_top1", "knn_top5", "probe_sgd_top1", "probe_sgd_top5"}
    # the recorded protocol is the effective one, defaults filled in
    assert results["protocols"]["probe_sgd"]["batch_size"] == 4096 and "linear" not in results["protocols"]
