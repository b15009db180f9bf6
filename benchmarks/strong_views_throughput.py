"""Throughput of CLSA's views on the device against a per-sample torchvision pipeline.

Ours: ``views=weak_strong`` on a batch of uint8 CIFAR-10 images (all random parameters
drawn, then applied batched): the strong view alone and the whole CLSA view set. The
reference: the same operations with torchvision's ``transforms.v2.functional`` on one
uint8 image at a time (random resized crop, flip, colour jitter p=0.8, grayscale p=0.2,
then 5 rounds of one of the 14 operations with p=0.5), in one thread, as one DataLoader
worker would run it; N workers give at most N times that. Run:

    .venv/bin/python benchmarks/strong_views_throughput.py --data-root .cache/data --write
"""

from __future__ import annotations

import argparse
import math
import random
import sys
import time

import numpy as np
import torch
import torchvision.transforms.v2 as T
import torchvision.transforms.v2.functional as TF

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from _report import machine, markdown_table, record

from metacontrast.builder import component_config
from metacontrast.interfaces import BuildContext
from metacontrast.records import Batch
from metacontrast_kornia.strong_views import WeakStrongViews

BILINEAR = TF.InterpolationMode.BILINEAR


def _shear(img, m, axis):
    angle = math.degrees(math.atan(m))
    shear = [-angle, 0.0] if axis == 0 else [0.0, angle]
    return TF.affine(img, angle=0.0, translate=[0, 0], scale=1.0, shear=shear, interpolation=BILINEAR,
                     fill=128)


def _translate(img, m, axis):
    shift = [round(m * img.shape[-1]), 0] if axis == 0 else [0, round(m * img.shape[-2])]
    return TF.affine(img, angle=0.0, translate=shift, scale=1.0, shear=[0.0, 0.0], fill=128)


TV_OPS = [  # (function of (image, u in [0, 1)), as Table 1)
    lambda x, u: _shear(x, -0.3 + 0.6 * u, 0), lambda x, u: _shear(x, -0.3 + 0.6 * u, 1),
    lambda x, u: _translate(x, -0.3 + 0.6 * u, 0), lambda x, u: _translate(x, -0.3 + 0.6 * u, 1),
    lambda x, u: TF.rotate(x, -30 + 60 * u, interpolation=BILINEAR, fill=128),
    lambda x, u: TF.autocontrast(x), lambda x, u: TF.invert(x), lambda x, u: TF.equalize(x),
    lambda x, u: TF.solarize(x, min(255, int(256 * u))), lambda x, u: TF.posterize(x, min(8, 4 + int(5 * u))),
    lambda x, u: TF.adjust_contrast(x, 0.05 + 0.9 * u), lambda x, u: TF.adjust_saturation(x, 0.05 + 0.9 * u),
    lambda x, u: TF.adjust_brightness(x, 0.05 + 0.9 * u), lambda x, u: TF.adjust_sharpness(x, 0.05 + 0.9 * u),
]


def torchvision_strong(size: int):
    weak = T.Compose([T.RandomResizedCrop(size, scale=(0.2, 1.0), antialias=True), T.RandomHorizontalFlip(),
                      T.RandomApply([T.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8), T.RandomGrayscale(0.2)])

    def strong(img):
        img = weak(img)
        for _ in range(5):
            if random.random() < 0.5:
                img = random.choice(TV_OPS)(img, random.random())
        return img
    return strong


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-root", default=".cache/data")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--write", action="store_true")
    args = p.parse_args()
    data = np.load(f"{args.data_root}/cifar10/cifar10.npz")
    images = torch.from_numpy(data["x_train"][: args.batch]).permute(0, 3, 1, 2).contiguous()
    ctx = BuildContext(in_channels=3, image_size=32, mean=(0.49, 0.48, 0.45), std=(0.25, 0.24, 0.26))
    batch = Batch(images=images, index=torch.arange(args.batch))
    rows = []

    def ours(settings: dict) -> float:
        gen = WeakStrongViews(component_config(WeakStrongViews, "views", settings), ctx)
        g = torch.Generator().manual_seed(0)
        gen(batch, g)  # warm-up
        start = time.perf_counter()
        for _ in range(args.repeats):
            gen(batch, g)
        return args.batch * args.repeats / (time.perf_counter() - start)

    single = ours({"strong_sizes": [14], "weak": {"blur_p": 0.0}})
    multi = ours({"strong_sizes": [32, 28, 24, 18, 14], "weak": {"blur_p": 0.0}})
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    random.seed(0)
    pipeline = torchvision_strong(14)
    for img in images[:16]:
        pipeline(img)
    start = time.perf_counter()
    n = min(args.batch, 512)
    for img in images[:n]:
        pipeline(img)
    per_sample = n / (time.perf_counter() - start)
    torch.set_num_threads(threads)
    rows.append(["torchvision v2, one image at a time, 1 thread (one loader worker): 1 strong 14-px view",
                 f"{per_sample:,.0f}", "1.00"])
    rows.append([f"ours, batched ({threads} threads): 2 weak 32-px + 1 strong 14-px views "
                 "(clsa_single_cifar)",
                 f"{single:,.0f} images ({3 * single:,.0f} views)", f"{3 * single / per_sample:.1f}"])
    rows.append([f"ours, batched ({threads} threads): 2 weak + 5 strong 32/28/24/18/14-px views "
                 "(clsa_multi_cifar)",
                 f"{multi:,.0f} images ({7 * multi:,.0f} views)", f"{7 * multi / per_sample:.1f}"])
    body = "\n".join([
        "### CLSA's strong views: batched on the device vs per-sample torchvision",
        "",
        f"Command: `.venv/bin/python benchmarks/strong_views_throughput.py --data-root {args.data_root} "
        f"--write`. CIFAR-10 (JPEG q75 copy) uint8 images, batch {args.batch}, CPU. The ratio compares "
        "views per second with one torchvision worker's strong views per second (a strong view costs "
        "more than a weak one, so the ratio understates ours). Ours runs on all threads, the "
        "reference on one: per core, halve the ratios on this 2-core machine. "
        f"Machine: {machine()}.",
        "",
        markdown_table(["pipeline", "per second", "views/s ratio"], rows),
    ])
    print(body)
    if args.write:
        record("strong_views_throughput", body)


if __name__ == "__main__":
    main()
