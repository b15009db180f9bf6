"""LARS and the schedule against literal, loop-based references."""

import math

import torch
from torch import nn

from metacontrast.optim import LARS, param_groups, warmup_cosine


def _lars_reference(params, grads, bufs, lr, momentum, wd, eta, adapt):
    out = []
    for p, g, buf in zip(params, grads, bufs, strict=True):
        p, g = p.clone(), g.clone()
        wn, gn = p.norm().item(), g.norm().item()
        trust = eta * wn / (gn + wd * wn) if adapt and wn > 0 and gn > 0 else 1.0
        u = (g + wd * p) * trust
        buf = momentum * buf + u
        out.append((p - lr * buf, buf))
    return out


def test_lars_matches_loop_reference_over_three_steps():
    torch.manual_seed(0)
    ws = [torch.randn(5, 3), torch.randn(7)]
    plain = [torch.randn(4)]
    params = [nn.Parameter(t.clone()) for t in ws + plain]
    opt = LARS([{"params": params[:2]}, {"params": params[2:], "weight_decay": 0.0, "lars_adapt": False}],
               lr=0.5, momentum=0.9, weight_decay=1e-2, eta=0.02)
    ref = [t.clone() for t in ws + plain]
    bufs = [torch.zeros_like(t) for t in ref]
    for _ in range(3):
        grads = [torch.randn_like(t) for t in ref]
        for p, g in zip(params, grads, strict=True):
            p.grad = g.clone()
        opt.step()
        a = _lars_reference(ref[:2], grads[:2], bufs[:2], 0.5, 0.9, 1e-2, 0.02, True)
        b = _lars_reference(ref[2:], grads[2:], bufs[2:], 0.5, 0.9, 0.0, 0.02, False)
        ref, bufs = [x for x, _ in a + b], [y for _, y in a + b]
        for p, r in zip(params, ref, strict=True):
            torch.testing.assert_close(p.detach(), r, rtol=1e-5, atol=1e-6)


def test_lars_with_a_tensor_learning_rate_and_groups_of_their_own_rates_matches_the_reference():
    torch.manual_seed(1)
    ws = [torch.randn(5, 3), torch.randn(7), torch.randn(4)]
    grads = [[torch.randn_like(t) for t in ws] for _ in range(2)]
    results = {}
    for kind in ("float", "tensor", "per_group"):
        params = [nn.Parameter(t.clone()) for t in ws]
        lr = torch.tensor(0.5) if kind == "tensor" else 0.5
        plain = {"params": params[2:], "weight_decay": 0.0, "lars_adapt": False}
        if kind == "per_group":
            plain["lr"] = 0.25
        opt = LARS([{"params": params[:2]}, plain], lr=0.5, momentum=0.9, weight_decay=1e-2, eta=0.02)
        if kind == "tensor":
            for group in opt.param_groups:
                group["lr"] = lr
        for step in grads:
            for p, g in zip(params, step, strict=True):
                p.grad = g.clone()
            opt.step()
        results[kind] = [p.detach().clone() for p in params]
    decay, decay_bufs = [t.clone() for t in ws[:2]], [torch.zeros_like(t) for t in ws[:2]]
    plain, plain_bufs = [ws[2].clone()], [torch.zeros_like(ws[2])]
    for step in grads:
        a = _lars_reference(decay, step[:2], decay_bufs, 0.5, 0.9, 1e-2, 0.02, True)
        b = _lars_reference(plain, step[2:], plain_bufs, 0.25, 0.9, 0.0, 0.02, False)
        decay, decay_bufs = [x for x, _ in a], [y for _, y in a]
        plain, plain_bufs = [x for x, _ in b], [y for _, y in b]
    for p, r in zip(results["per_group"], decay + plain, strict=True):
        torch.testing.assert_close(p, r, rtol=1e-5, atol=1e-6)
    for p, q in zip(results["tensor"], results["float"], strict=True):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)


def test_param_groups_exclude_bias_and_norm():
    model = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3), nn.Linear(3, 2, bias=False))
    decay, plain = param_groups(model, 1e-4, exclude_bias_and_norm=True)
    assert {id(p) for p in decay["params"]} == {id(model[0].weight), id(model[2].weight)}
    assert {id(p) for p in plain["params"]} == {id(model[0].bias), id(model[1].weight), id(model[1].bias)}
    assert plain["weight_decay"] == 0.0 and plain["lars_adapt"] is False
    (everything,) = param_groups(model, 1e-4, exclude_bias_and_norm=False)
    assert len(everything["params"]) == 5


def test_warmup_then_cosine_literal():
    total, warm = 100, 10
    for s in range(total):
        expected = (s + 1) / warm if s < warm else 0.5 * (1 + math.cos(math.pi * (s - warm) / (total - warm)))
        assert math.isclose(warmup_cosine(s, total, warm), expected, rel_tol=1e-12)
    assert warmup_cosine(total, total, warm) == 0.0
    assert warmup_cosine(50, total, 0, schedule="constant") == 1.0


def test_torch_optimizers_use_fused_kernels_on_cuda_and_foreach_elsewhere():
    from omegaconf import OmegaConf

    from metacontrast.optim import build_optimizer, kernel_options

    assert kernel_options(torch.device("cuda", 0)) == {"fused": True}
    assert kernel_options(torch.device("cpu")) == {"foreach": True}
    model = nn.Linear(3, 2)
    for name in ("sgd", "adam", "adamw"):
        cfg = OmegaConf.create({"name": name, "lr": 0.1, "scale_lr_by_batch": False, "weight_decay": 0.0,
                                "momentum": 0.9, "betas": [0.9, 0.999], "exclude_bias_and_norm": True})
        opt = build_optimizer(cfg, model, 256)
        assert opt.defaults["foreach"] is True and not opt.defaults.get("fused"), name


def test_lars_follows_a_group_setting_changed_between_steps():
    torch.manual_seed(2)
    w = torch.randn(6, 4)
    param = nn.Parameter(w.clone())
    opt = LARS([param], lr=0.5, momentum=0.9, weight_decay=1e-2, eta=0.02)
    ref, buf = w.clone(), torch.zeros_like(w)
    for wd in (1e-2, 0.5):
        opt.param_groups[0]["weight_decay"] = wd
        g = torch.randn_like(w)
        param.grad = g.clone()
        opt.step()
        ((ref, buf),) = _lars_reference([ref], [g], [buf], 0.5, 0.9, wd, 0.02, True)
        torch.testing.assert_close(param.detach(), ref, rtol=1e-5, atol=1e-6)
