"""Reading the same images from an image folder, tar shards and a Hugging Face dataset.

``--images`` JPEGs (``--size`` pixels, quality 90, 10 classes) are written three ways: one
file each (``data=imagefolder``), 16 tar shards by ``webdataset.TarWriter``
(``data=webdataset``), and a ``DatasetDict`` saved to disk (``data=hf``). For each source:
the time to open it the first time (list the folder, index the shards' headers, open the
Arrow files and read the labels) and again (the shards' index is then read from its
cache), and images decoded per second through the training path (``stream_batches``:
shuffled batches of 256, decoded at 32 pixels) with 0 and 2 loader workers, and with the
workers only reading while TorchCodec decodes on the device (the GPU where there is one,
else the CPU: ``data.decode=device``). One process,
the sources interleaved round by round, the best round kept.

    .venv/bin/python benchmarks/data_sources.py --write
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from _report import machine, markdown_table, record

from metacontrast.config import compose_config
from metacontrast.data.datasets import ENCODED_SOURCES
from metacontrast.data.files import BadFiles, stream_batches

CLASSES = 10


def _write(root: Path, n: int, size: int) -> None:
    import datasets
    import webdataset as wds
    from PIL import Image

    g = np.random.default_rng(0)
    rows = []
    for i in range(n):
        label = i % CLASSES
        pixels = np.clip(g.normal(25 * label, 40, (size, size, 3)), 0, 255).astype(np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
        rows.append((f"{i:07d}", buffer.getvalue(), label))
    test = rows[: n // 10]
    for split, part in (("train", rows), ("test", test)):
        for key, data, label in part:
            folder = root / "folder" / split / f"c{label}"
            folder.mkdir(parents=True, exist_ok=True)
            (folder / f"{key}.jpg").write_bytes(data)
    per = -(-len(rows) // 16)
    for shard in range(16):
        with wds.TarWriter(str(root / f"train-{shard:06d}.tar")) as sink:
            for key, data, label in rows[shard * per:(shard + 1) * per]:
                sink.write({"__key__": key, "jpg": data, "cls": label})
    with wds.TarWriter(str(root / "test-000000.tar")) as sink:
        for key, data, label in test:
            sink.write({"__key__": key, "jpg": data, "cls": label})
    features = datasets.Features({"image": datasets.Image(), "label": datasets.Value("int64")})
    saved = datasets.DatasetDict({split: datasets.Dataset.from_dict(
        {"image": [{"bytes": d, "path": None} for _, d, _ in part], "label": [y for _, _, y in part]},
        features=features) for split, part in (("train", rows), ("test", test))})
    saved.save_to_disk(str(root / "hf"))


def _configs(root: Path) -> dict[str, object]:
    common = ["data.image_size=32"]
    return {
        "imagefolder": compose_config(["data=imagefolder", f"data.root={root / 'folder'}", *common]).data,
        "webdataset": compose_config(["data=webdataset", f"data.root={root}",
                                      "data.shards.train='train-{000000..000015}.tar'",
                                      "data.shards.test='test-000000.tar'", *common]).data,
        "hf": compose_config(["data=hf", f"data.root={root / 'hf'}", *common]).data,
    }


DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _decode_rate(files, workers: int, batch: int = 256, on_device: bool = False) -> float:
    order = torch.randperm(len(files), generator=torch.Generator().manual_seed(0))
    plan = [(i, order[s:s + batch]) for i, s in enumerate(range(0, len(files) - batch + 1, batch))]
    bad = BadFiles("strict", 0.0, len(files))
    started = time.perf_counter()
    batches = stream_batches(files, plan, bad, workers, decode_device=DEVICE if on_device else None)
    count = sum(images.shape[0] for _, images, _ in batches)
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()
    return count / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=8192)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--write", action="store_true", help="record the table in docs/benchmarks.md")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        os.environ["METACONTRAST_CACHE_DIR"] = str(root / "cache")  # a cold index cache
        _write(root, args.images, args.size)
        configs = _configs(root)
        import datasets  # noqa: F401  (imports are not part of opening a source)
        import torchvision.datasets  # noqa: F401

        # per source: first open, best later open, best decode rates with 0 and 2 workers
        best: dict[str, list[float]] = {name: [0.0, float("inf"), 0.0, 0.0, 0.0] for name in configs}
        for round_ in range(args.rounds + 1):
            for name, cfg in configs.items():
                started = time.perf_counter()
                train, _, _ = ENCODED_SOURCES[name](cfg)
                opened = time.perf_counter() - started
                if round_ == 0:
                    best[name][0] = opened
                    continue
                best[name][1] = min(best[name][1], opened)
                best[name][2] = max(best[name][2], _decode_rate(train, 0))
                best[name][3] = max(best[name][3], _decode_rate(train, 2))
                best[name][4] = max(best[name][4], _decode_rate(train, 2, on_device=True))
    rows = [[name, *(f"{v:.2f}" for v in b[:2]), *(f"{v:.0f}" for v in b[2:])] for name, b in best.items()]
    table = markdown_table(["source", "first open (s)", "later opens (s)", "decoded img/s, 0 workers",
                            "2 workers", f"2 workers, decoded on {DEVICE.type} (data.decode=device)"], rows)
    body = (f"### Reading images: folder, tar shards, Hugging Face dataset\n\n{args.images} JPEGs of "
            f"{args.size} px (10 classes) in each source, decoded to 32 px in shuffled batches of 256 "
            f"(`stream_batches`, the training path); best of {args.rounds} interleaved rounds. "
            f"{machine()}.\n\n    .venv/bin/python benchmarks/data_sources.py --write\n\n{table}\n")
    print(body)
    if args.write:
        record("data-sources" if DEVICE.type == "cpu" else "data-sources-cuda", body)


if __name__ == "__main__":
    main()
