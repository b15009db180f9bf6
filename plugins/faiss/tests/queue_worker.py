"""Run under torchrun: one default train step with a key queue on each rank.

Usage: torchrun --standalone --nproc_per_node=W queue_worker.py OUT_DIR
Each rank draws its own images; after the optimizer step the queue holds every rank's
keys in rank order. Writes OUT_DIR/rank<r>.pt with the queue's state and the keys this
rank wrote.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from metacontrast import distributed
from metacontrast.builtin.encoders import Conv4, Conv4Config
from metacontrast.builtin.episodes import PairsEpisode
from metacontrast.builtin.heads import IdentityHead
from metacontrast.builtin.views import IdentityViews, IdentityViewsConfig
from metacontrast.interfaces import BuildContext, Loss, NoConfig
from metacontrast.model import Model
from metacontrast.records import Batch, StepInputs
from metacontrast.step import DefaultTrainStep
from metacontrast_faiss.queue import KeyQueue, QueueConfig


class MeanSquare(Loss):
    NAME = "mean_square"

    def forward(self, inputs):
        return inputs.embeddings.z.pow(2).mean() + 0 * inputs.memory.sum()


def main(out_dir: Path) -> None:
    world = distributed.init_from_env("cpu")
    torch.manual_seed(0)  # the same weights and initial queue on every rank
    ctx = BuildContext(in_channels=1, image_size=16, mean=(0.5,), std=(0.25,))
    encoder = Conv4(Conv4Config(hidden=4, pool="avg"), ctx)
    ctx = ctx.evolve(encoder_dim=encoder.out_dim, head_dim=encoder.out_dim)
    model = Model(encoder, IdentityHead(NoConfig(), ctx), {"mean_square": MeanSquare()}, {"mean_square": 1.0})
    queue = KeyQueue(QueueConfig(size=7, source="z", views=[1]), ctx)
    step = DefaultTrainStep(IdentityViews(IdentityViewsConfig(n_views=2), ctx), PairsEpisode(NoConfig(), ctx),
                            memory=queue)
    written = []
    keys_of = queue.keys_of
    queue.keys_of = lambda emb, views: written.append(keys_of(emb, views)) or written[-1]
    wrapped = distributed.wrap_ddp(model, torch.device("cpu"))
    g = torch.Generator().manual_seed(100 + world.rank)  # each rank its own images
    images = torch.randint(0, 256, (3, 1, 16, 16), dtype=torch.uint8, generator=g)
    index = torch.arange(3) + 10 * world.rank
    before = queue.keys.clone()
    terms = step(Batch(images=images, index=index), StepInputs(generator=g, step=0, model=wrapped))
    terms.total.backward()
    step.after_optimizer_step(0, 1)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.save({"before": before, "keys": queue.keys, "ids": queue.ids, "pointer": queue.pointer,
                "written": written[0][0], "written_ids": written[0][1]}, out_dir / f"rank{world.rank}.pt")
    distributed.shutdown()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
