"""Run under torchrun (or alone): one MetAug step on this rank's 8 images, first with an
undistributed copy of the model (the rank's own gradients), then through DDP (the
gradients every rank applies). Saves both to ``OUT/rank<r>.pt``.

Usage: ddp_metaug_worker.py OUT DATA_ROOT
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import torch

from metacontrast.config import compose_config
from metacontrast.records import Batch, StepInputs
from metacontrast.trainer import setup


def main() -> None:
    out, root = Path(sys.argv[1]), sys.argv[2]
    out.mkdir(parents=True, exist_ok=True)
    cfg = compose_config(["method=metaug", "data=cifar10", f"data.root={root}", "encoder.width=0.125",
                          "memory.read_size=32", "trainer.batch_size=8", "trainer.device=cpu", "eval=[knn]", "eval.knn.k=5",
                          f"trainer.run_dir={out / 'run'}", "trainer.progress=false"])
    run = setup(cfg)
    step = run.plugins.make_train_step(run.cfg, run.components)
    rank = run.world.rank
    idx = torch.arange(8) + 8 * rank
    batch = Batch(images=run.data.train_images[idx], index=idx)
    generator_state = run.generator.get_state()
    memory_state = copy.deepcopy(run.components.memory.state_dict())
    model_state = copy.deepcopy(run.model.state_dict())

    def one_step(model: torch.nn.Module) -> dict[str, torch.Tensor]:
        """One step with ``model`` as the step's (wrapped or not) model, from the same state."""
        run.generator.set_state(generator_state)
        run.components.memory.load_state_dict(memory_state)  # the same memory sample both times
        run.model.load_state_dict(model_state)  # and the same batch-norm statistics
        run.model.zero_grad(set_to_none=True)
        terms = step(batch, StepInputs(generator=run.generator, step=0, model=model, autocast=run.autocast))
        terms.total.backward()
        return {n: p.grad.detach().clone() for n, p in run.model.named_parameters() if p.grad is not None}

    local = one_step(run.model)  # no synchronisation: this rank's own gradients
    synced = one_step(run.wrapped)
    torch.save({"local": local, "synced": synced}, out / f"rank{rank}.pt")


if __name__ == "__main__":
    main()
