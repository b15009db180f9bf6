"""Run under torchrun: one step's loss and gradients of SimCLR on a fixed global batch.

Usage: torchrun --standalone --nproc_per_node=W tests/ddp_equivalence_worker.py OUT_DIR
With W = 1 (or no torchrun) the process takes the whole batch. NT_XENT_GATHER=0 turns
off the cross-rank negatives (the negative control). METHOD=protonet|ridge|svm uses that
solver with query cross-entropy on a 1-shot episode spanning the ranks (SPAN=0: each
rank its own task, the negative control). METHOD=triplet|npair: the classic losses
(NT_XENT_GATHER=0 turns off their cross-rank negatives too). Writes OUT_DIR/rank<r>.pt
with the mean loss and every parameter gradient after DDP's averaging.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

from metacontrast import distributed
from metacontrast.builtin.encoders import Conv4, Conv4Config
from metacontrast.builtin.heads import MLPConfig, MLPHead
from metacontrast.interfaces import BuildContext
from metacontrast.model import Model
from metacontrast.records import Episode, Views
from metacontrast_simclr.nt_xent import NTXentConfig, NTXentLoss

GLOBAL_BATCH = 8


def main(out_dir: Path) -> None:
    world = distributed.init_from_env("cpu")
    torch.manual_seed(0)
    ctx = BuildContext(in_channels=1, image_size=16, mean=(0.5,), std=(0.25,))
    encoder = Conv4(Conv4Config(hidden=8), ctx)
    head = MLPHead(MLPConfig(hidden_dim=16, out_dim=8), ctx.evolve(encoder_dim=encoder.out_dim))
    gather = os.environ.get("NT_XENT_GATHER", "1") == "1"
    method = os.environ.get("METHOD", "simclr")
    if method == "simclr":
        loss = NTXentLoss(NTXentConfig(temperature=0.3, gather=gather), ctx)
        model = Model(encoder, head, {"nt_xent": loss}, {"nt_xent": 1.0})
    elif method in ("triplet", "npair"):
        from metacontrast_classic.npair import NPairConfig, NPairLoss
        from metacontrast_classic.triplet import TripletConfig, TripletLoss

        loss = (TripletLoss(TripletConfig(margin=0.5, mining="semi_hard", gather=gather), ctx) if method == "triplet"
                else NPairLoss(NPairConfig(gather=gather), ctx))
        model = Model(encoder, head, {method: loss}, {method: 1.0})
    else:
        from metacontrast_metassl.losses import QueryCELoss
        from metacontrast_metassl.solvers import ProtoNetConfig, ProtoNetSolver, RidgeConfig, RidgeSolver
        from metacontrast_metassl.svm import SVMConfig, SVMSolver

        solver = {"protonet": lambda: ProtoNetSolver(ProtoNetConfig(), ctx),
                  "ridge": lambda: RidgeSolver(RidgeConfig(lam=1.0), ctx),
                  "svm": lambda: SVMSolver(SVMConfig(c=1.0, iterations=10), ctx)}[method]()
        model = Model(encoder, head, {"query_ce": QueryCELoss(None, ctx)}, {"query_ce": 1.0}, solver=solver)
    if world.distributed:
        model = distributed.convert_sync_batchnorm(model, "cpu")
    wrapped = distributed.wrap_ddp(model, torch.device("cpu"))
    g = torch.Generator().manual_seed(1)
    all_views = torch.randn(2, GLOBAL_BATCH, 1, 16, 16, generator=g)
    b = GLOBAL_BATCH // world.world_size
    mine = slice(world.rank * b, (world.rank + 1) * b)
    views = Views(images=(all_views[0, mine], all_views[1, mine]), index=torch.arange(GLOBAL_BATCH)[mine])
    if method in ("simclr", "triplet", "npair"):  # the all-pairs episode of the whole world (the losses'
        episode = Episode.from_views(views, rank=world.rank, world_size=world.world_size)  # gather: across it)
    else:
        span = os.environ.get("SPAN", "1") == "1"
        episode = Episode.from_views(views, 1, rank=world.rank if span else 0,
                                     world_size=world.world_size if span else 1)
    terms, _ = wrapped(views, episode)
    terms.total.backward()
    mean_loss = distributed.all_reduce_mean(terms.total.detach())
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters()}
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.save({"loss": mean_loss, "grads": grads,
                "running_mean": {n: m for n, m in model.state_dict().items() if "running_mean" in n}},
               out_dir / f"rank{world.rank}.pt")
    distributed.shutdown()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
