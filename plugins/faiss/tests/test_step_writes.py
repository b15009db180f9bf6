"""The default train step with a real queue: losses read the keys from before the step,
every micro-batch of an optimizer step is written, a skipped step writes nothing."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from metacontrast.builtin.encoders import Conv4, Conv4Config
from metacontrast.builtin.episodes import PairsEpisode
from metacontrast.builtin.heads import IdentityHead
from metacontrast.builtin.views import IdentityViews, IdentityViewsConfig
from metacontrast.interfaces import BuildContext, Loss, NoConfig
from metacontrast.model import Model
from metacontrast.records import Batch, StepInputs
from metacontrast.step import DefaultTrainStep
from metacontrast_faiss.queue import KeyQueue, QueueConfig


class RecordsMemory(Loss):
    NAME = "records_memory"

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[torch.Tensor] = []

    def forward(self, inputs):
        self.seen.append(inputs.memory.clone())
        return inputs.embeddings.z.pow(2).mean()


def _setup(size=20):
    torch.manual_seed(0)
    ctx = BuildContext(in_channels=1, image_size=16, mean=(0.5,), std=(0.25,))
    encoder = Conv4(Conv4Config(hidden=4, pool="avg"), ctx)
    ctx = ctx.evolve(encoder_dim=encoder.out_dim, head_dim=encoder.out_dim)
    loss = RecordsMemory()
    model = Model(encoder, IdentityHead(NoConfig(), ctx), {"records_memory": loss}, {"records_memory": 1.0}).eval()
    queue = KeyQueue(QueueConfig(size=size, source="z", views=[1]), ctx)
    step = DefaultTrainStep(IdentityViews(IdentityViewsConfig(n_views=2), ctx), PairsEpisode(NoConfig(), ctx),
                            memory=queue)
    return model, queue, step, loss


def _batch(seed, b=3):
    g = torch.Generator().manual_seed(seed)
    return Batch(images=torch.randint(0, 256, (b, 1, 16, 16), dtype=torch.uint8, generator=g),
                 index=torch.arange(b) + 10 * seed)


def _keys(model, step, batch):
    with torch.no_grad():
        views = step.views(batch, StepInputs(generator=torch.Generator(), step=0, model=model))
        return F.normalize(model.embed(views).view(1, 2), dim=1)


def test_micro_batches_are_all_written_after_the_optimizer_step_and_losses_see_the_old_keys():
    model, queue, step, loss = _setup()
    before = queue.keys.clone()
    g = torch.Generator()
    for seed in (1, 2):  # two micro-batches of one optimizer step
        step(_batch(seed), StepInputs(generator=g, step=0, model=model))
    assert all(torch.equal(seen, before) for seen in loss.seen)  # nothing written mid-step
    step.after_optimizer_step(0, 1)
    expected = torch.cat([_keys(model, step, _batch(1)), _keys(model, step, _batch(2))])
    assert torch.allclose(queue.keys[:6], expected, atol=1e-6) and torch.equal(queue.keys[6:], before[6:])
    assert queue.ids[:6].tolist() == [10, 11, 12, 20, 21, 22] and int(queue.pointer) == 6


def test_keys_of_a_skipped_step_are_dropped():
    model, queue, step, _ = _setup()
    g = torch.Generator()
    step(_batch(1), StepInputs(generator=g, step=0, model=model))  # step 0 skipped: no optimizer step
    step(_batch(2), StepInputs(generator=g, step=1, model=model))
    step.after_optimizer_step(0, 1)
    assert queue.ids[:3].tolist() == [20, 21, 22] and int(queue.pointer) == 3


def test_nearest_finds_the_keys_written():
    model, queue, step, _ = _setup(size=50)
    step(_batch(3), StepInputs(generator=torch.Generator(), step=0, model=model))
    step.after_optimizer_step(0, 1)
    scores, slots = queue.nearest(queue.keys[:3], 1)
    assert slots.flatten().tolist() == [0, 1, 2] and torch.allclose(scores.flatten(), torch.ones(3), atol=1e-5)
