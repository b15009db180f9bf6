"""The calibration recipe (experiment=speedrun/reference_simclr_100ep) takes the step the
public SimCLR CIFAR-10 reference takes: a torchvision ResNet-18 with the CIFAR stem and
its projector, each view in its own forward pass (two BatchNorm batches), InfoNCE with
t = 0.5 written as the reference writes it, and SGD (momentum 0.9, weight decay 5e-4 on
every parameter, lr 0.06 x batch/256). Built here from the reference's description with
torch alone, fed the same views and the same initial weights, one step of each must give
the same loss and the same weights; with one BatchNorm batch for both views it must not."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from metacontrast.config import compose_config
from metacontrast.records import Batch
from metacontrast.trainer import setup, take_step

BATCH = 16


def _reference_model(encoder: nn.Module, head: nn.Module) -> nn.Module:
    """ResNet-18 (3x3 stride-1 first convolution, no max-pool, no classifier) and the
    projector 512 -> 1024 -> ReLU -> 128, with the weights of ours."""
    backbone = torchvision.models.resnet18(weights=None)
    backbone.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
    backbone.maxpool = nn.Identity()
    backbone.fc = nn.Identity()
    backbone.load_state_dict(encoder.net.state_dict())
    linears = [m for m in head.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(512, 1024), (1024, 128)]
    projector = nn.Sequential(nn.Linear(512, 1024), nn.ReLU(), nn.Linear(1024, 128))
    projector[0].load_state_dict(linears[0].state_dict())
    projector[2].load_state_dict(linears[1].state_dict())
    return nn.Sequential(backbone, projector)


def _info_nce(features: torch.Tensor, temperature: float = 0.5) -> torch.Tensor:
    """The reference's loss: cosine similarities of all 2B rows, the own row masked, the
    other view of the same image the target, cross-entropy averaged over the rows."""
    x = F.normalize(features)
    cos = x @ x.T / temperature
    cos.fill_diagonal_(float("-inf"))
    b = cos.shape[0] // 2
    targets = torch.cat([torch.arange(b, 2 * b), torch.arange(b)])
    return F.cross_entropy(cos, targets)


def _one_step(colour_npz: str, tmp_path, forward_chunks: int):
    cfg = compose_config(["experiment=speedrun/reference_simclr_100ep", "data=npz", f"data.root={colour_npz}",
                          "trainer.device=cpu", "trainer.cuda_graphs=false", "trainer.precision=fp32",
                          "eval.knn.k=5", "eval.knn_majority.k=5", f"trainer.batch_size={BATCH}", "trainer.max_steps=1", f"trainer.forward_chunks={forward_chunks}",
                          # the same memory layout as the reference's model: the math is compared, and
                          # channels_last reorders the CPU's sums, which the backward of a freshly
                          # initialised network amplifies to about 1% in the first layers
                          "trainer.channels_last=false", f"trainer.run_dir={tmp_path}"])
    run = setup(cfg)
    reference = _reference_model(run.model.encoder, run.model.head)
    initial = copy.deepcopy(reference.state_dict())
    batch = Batch(images=run.data.train_x[:BATCH], index=torch.arange(BATCH))
    draw = copy.deepcopy(run.generator.get_state())
    step_fn = run.plugins.make_train_step(cfg, run.components)
    terms, updated = take_step(run, step_fn, batch)
    assert updated
    generator = torch.Generator().manual_seed(0)
    generator.set_state(draw)
    views = run.components.view_generator(batch, generator)  # the views the step trained on
    reference.train()
    z1, z2 = reference(views.images[0]), reference(views.images[1])  # a pass per view, as the reference
    loss = _info_nce(torch.cat([z1, z2]))
    optimizer = torch.optim.SGD(reference.parameters(), lr=0.06 * BATCH / 256, momentum=0.9, weight_decay=5e-4,
                                nesterov=False)
    loss.backward()
    optimizer.step()
    return run, reference, initial, float(terms.total.detach()), float(loss.detach())


def test_the_calibration_step_is_the_reference_s_step(colour_npz, tmp_path):
    run, reference, initial, ours, theirs = _one_step(colour_npz, tmp_path, forward_chunks=2)
    assert ours == pytest.approx(theirs, rel=1e-5)
    linears = [m for m in run.model.head.modules() if isinstance(m, nn.Linear)]
    after = {**{f"0.{k}": v for k, v in run.model.encoder.net.state_dict().items()},
             **{f"1.0.{k}": v for k, v in linears[0].state_dict().items()},
             **{f"1.2.{k}": v for k, v in linears[1].state_dict().items()}}
    theirs_after = reference.state_dict()
    assert after.keys() == theirs_after.keys()
    moved = 0
    for name, start in initial.items():  # the updates (and BatchNorm's running statistics) agree
        if not start.is_floating_point():
            assert torch.equal(after[name], theirs_after[name]), name  # batches seen
            continue
        ours_delta, their_delta = after[name] - start, theirs_after[name] - start
        scale = their_delta.norm()
        moved += bool(scale > 0)
        assert (ours_delta - their_delta).norm() <= 1e-3 * scale + 1e-7, f"{name} after one step"
    assert moved == len([k for k, v in initial.items() if v.is_floating_point()])  # every tensor moved


def test_one_batchnorm_batch_for_both_views_is_another_step(colour_npz, tmp_path):
    """The negative control: trainer.forward_chunks=1 normalises the 2 x B views together."""
    _, _, _, ours, theirs = _one_step(colour_npz, tmp_path, forward_chunks=1)
    assert abs(ours - theirs) > 1e-4
