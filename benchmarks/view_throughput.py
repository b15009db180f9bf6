"""View generation on the device against torchvision's per-sample transforms in DataLoader
workers, for SimCLR's views, CLSA's strong views, multi-crop and task rotation.

Ours: the trainer's own view path (``step.views``: all random parameters drawn for the
batch, then applied batched to the uint8 images on the device, view transforms such as
task rotation included), timed over R batches of B images. The reference: the same
operations with ``torchvision.transforms.v2`` on one uint8 image at a time inside a
``DataLoader`` with one worker per core (W workers, the usual setting of today's
libraries), each sample's views converted to float and normalised there, timed over R
batches after the workers started. Both sides make the same number of views of the same
sizes; the ratio is views per second, ours over theirs, on the same machine. Run:

    .venv/bin/python benchmarks/view_throughput.py --data-root .cache/data --write
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
from collections.abc import Callable

import numpy as np
import torch
import torchvision.transforms.v2 as T
import torchvision.transforms.v2.functional as TF
from torch.utils.data import DataLoader, Dataset

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from _report import machine, markdown_table, record
from strong_views_throughput import torchvision_strong

from metacontrast import trainer
from metacontrast.config import compose_config
from metacontrast.records import Batch, StepInputs

MEAN, STD = (0.49, 0.48, 0.45), (0.25, 0.24, 0.26)

# name: (our overrides, views per image, the reference's per-image pipeline)
PIPELINES: dict[str, tuple[list[str], str]] = {
    "simclr": (["views=simclr_cifar"], "2 x 32 px: crop 0.08-1, flip, colour jitter p 0.8, grey p 0.2"),
    "simclr + task rotation": (["views=simclr_cifar", "+task_aug=rotation"],
                               "as simclr, then each image's views turned by 0/90/180/270"),
    "clsa strong views": (["views=clsa_single_cifar"], "2 weak 32 px + 1 strong 14 px (5 rounds of 14 ops)"),
    "multi-crop (clsa_multi)": (["views=clsa_multi_cifar"],
                                "2 weak 32 px + 5 strong 32/28/24/18/14 px"),
}


def simclr_view(size: int, scale: tuple[float, float] = (0.08, 1.0), strength: float = 0.5) -> T.Compose:
    s = strength
    return T.Compose([T.RandomResizedCrop(size, scale=scale, antialias=True), T.RandomHorizontalFlip(),
                      T.RandomApply([T.ColorJitter(0.8 * s, 0.8 * s, 0.8 * s, 0.2 * s)], p=0.8),
                      T.RandomGrayscale(0.2)])


def reference(name: str) -> Callable[[torch.Tensor], list[torch.Tensor]]:
    """The per-image pipeline of ``name``: uint8 (C, H, W) -> list of normalised float views."""
    weak = simclr_view(32)
    moco_weak = simclr_view(32, scale=(0.2, 1.0))
    if name == "simclr":
        makers = [weak, weak]
    elif name == "simclr + task rotation":
        def rotated(img: torch.Tensor) -> list[torch.Tensor]:
            k = random.randrange(4)
            return [torch.rot90(weak(img), k, (1, 2)) for _ in range(2)]
        return lambda img: [finish(v) for v in rotated(img)]
    elif name == "clsa strong views":
        makers = [moco_weak, moco_weak, torchvision_strong(14)]
    else:
        makers = [moco_weak, moco_weak, *(torchvision_strong(s) for s in (32, 28, 24, 18, 14))]
    return lambda img: [finish(m(img)) for m in makers]


def finish(view: torch.Tensor) -> torch.Tensor:
    return TF.normalize(TF.to_dtype(view, torch.float32, scale=True), MEAN, STD)


class PerSample(Dataset):
    def __init__(self, images: torch.Tensor, pipeline: Callable[[torch.Tensor], list[torch.Tensor]]) -> None:
        self.images, self.pipeline = images, pipeline

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> list[torch.Tensor]:
        return self.pipeline(self.images[i])


def collate(samples: list[list[torch.Tensor]]) -> list[torch.Tensor]:
    return [torch.stack(views) for views in zip(*samples, strict=True)]


def torchvision_rate(name: str, images: torch.Tensor, batch: int, repeats: int,
                     workers: int) -> tuple[float, int]:
    """Views per second from a DataLoader of ``workers`` processes (after the first batch),
    and the number of views per image."""
    loader = DataLoader(PerSample(images, reference(name)), batch_size=batch, shuffle=True,
                        num_workers=workers, collate_fn=collate, persistent_workers=workers > 0,
                        prefetch_factor=2 if workers > 0 else None, drop_last=True)
    it = iter(loader)
    first = next(it)
    start = time.perf_counter()
    for _ in range(repeats):
        next(it)
    return repeats * batch * len(first) / (time.perf_counter() - start), len(first)


def our_rate(args: argparse.Namespace, extra: list[str]) -> tuple[float, int]:
    """Views per second of the trainer's view path, and the number of views per image."""
    cfg = compose_config(["experiment=cifar10_simclr_resnet18", *extra, f"data.root={args.data_root}",
                          f"trainer.device={args.device}", f"trainer.batch_size={args.batch}",
                          f"data.train_subset={args.batch}", "data.test_subset=16",
                          "trainer.run_dir=/tmp/mc-bench", "trainer.progress=false", "encoder=conv4"])
    run = trainer.setup(cfg)
    step = run.plugins.make_train_step(cfg, run.components)
    images = run.data.train_images[: args.batch].to(run.device)
    batch = Batch(images=images, index=torch.arange(args.batch, device=run.device))
    ctx = StepInputs(generator=run.generator, step=0, model=run.wrapped, autocast=run.autocast)
    sync = torch.cuda.synchronize if run.device.type == "cuda" else (lambda: None)
    views = step.views(batch, ctx)
    n_views = len(views.images)
    sync()
    start = time.perf_counter()
    for _ in range(args.repeats):
        step.views(batch, ctx)
    sync()
    return args.repeats * args.batch * n_views / (time.perf_counter() - start), n_views


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-root", default=".cache/data")
    p.add_argument("--device", default="auto")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    p.add_argument("--write", action="store_true")
    args = p.parse_args()
    random.seed(0)
    torch.manual_seed(0)
    data = np.load(f"{args.data_root}/cifar10/cifar10.npz")
    images = torch.from_numpy(data["x_train"][: 4 * args.batch * (args.repeats + 2)]).permute(0, 3, 1, 2)
    images = images.contiguous()
    rows = []
    device = trainer.resolve_device(args.device)
    for name, (extra, described) in PIPELINES.items():
        ours, n_views = our_rate(args, extra)
        theirs, their_views = torchvision_rate(name, images, args.batch, args.repeats, args.workers)
        if their_views != n_views:
            raise SystemExit(f"{name}: ours makes {n_views} views per image, the reference {their_views}")
        rows.append([name, described, f"{theirs:,.0f}", f"{ours:,.0f}", f"{ours / theirs:.1f}"])
    body = "\n".join([
        f"### View generation: batched on the device ({device.type}) vs torchvision per sample in "
        f"{args.workers} DataLoader workers",
        "",
        f"Command: `.venv/bin/python benchmarks/view_throughput.py --data-root {args.data_root} "
        f"--device {args.device} --write`. CIFAR-10 uint8 images, batch {args.batch}, {args.repeats} "
        f"batches timed. Machine: {machine()}.",
        "",
        markdown_table(["views", "per image", f"torchvision, {args.workers} workers (views/s)",
                        "ours (views/s)", "ours / torchvision"], rows),
        "",
        "Ours is the trainer's view path (`step.views`), parameters drawn for the whole batch and "
        "applied batched; the reference makes the same views one image at a time with "
        "`torchvision.transforms.v2` in DataLoader worker processes, converts and normalises them "
        "there, and collates. On the CPU both sides share the same cores.",
    ])
    print(body)
    if args.write:
        record(f"view_throughput_{device.type}", body)


if __name__ == "__main__":
    main()
