"""Image files decoded by loader worker processes, and what to do with unreadable ones.

``ImageFiles`` decodes one file to a fixed-size uint8 ``(C, S, S)`` tensor. Decoding has no
randomness (augmentation happens later, on the device, from the trainer's generator), so the
number of workers never changes what a run computes, and resuming needs only the batch
sampler's position.

``BadFiles`` is the policy for files that cannot be decoded (a corrupt or truncated image,
a 0-byte file, a non-image named ``.jpg``): ``strict`` fails naming the file; ``skip`` warns
once per file, counts it, and fails once more than ``max_fraction`` of the files are bad.
"""

from __future__ import annotations

import copy
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import attrs
import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

BAD_FILE_MODES = ("strict", "skip")


class DatasetError(ValueError):
    """A dataset could not be read; the message names the key or file at fault."""


def check_split(dataset: str, split: str, samples: Tensor, labels: Tensor, ok: bool, expected: str) -> None:
    """``ok``: the split's samples are ``expected`` (e.g. ``uint8 (N, C, H, W)``), and
    ``labels`` must be ``(N,)``; otherwise a ``DatasetError`` naming dataset and split."""
    if not ok:
        raise DatasetError(f"{dataset}: {split} samples must be {expected}, got {samples.dtype} "
                           f"{tuple(samples.shape)}")
    if labels.shape != (samples.shape[0],):
        raise DatasetError(f"{dataset}: {split} labels must be ({samples.shape[0]},), "
                           f"got {tuple(labels.shape)}")


def decode_image(source: str | bytes, size: int) -> np.ndarray:
    """``source`` (a file path, or the encoded bytes of an image) -> RGB uint8
    ``(size, size, 3)`` (bicubic resize). Raises ``OSError`` for anything PIL cannot
    fully decode."""
    import io

    from PIL import Image

    encoded = isinstance(source, bytes | bytearray | memoryview)
    with Image.open(io.BytesIO(source) if encoded else source) as im:
        im.load()  # decode now: a truncated file fails here, not later
        im = im.convert("RGB").resize((size, size), Image.Resampling.BICUBIC)
        return np.array(im)  # a writable copy


class EncodedImages(Dataset):
    """Encoded images (files, members of tar shards, rows of a Hugging Face dataset)
    decoded to uint8 ``(3, size, size)``. Item ``i`` is ``(image, error)``: ``error`` is
    ``""`` on success; on failure the image is zeros and ``error`` says why (the caller
    applies the ``BadFiles`` policy, in the main process). Subclasses say where item ``i``
    is (``read``: a path or bytes) and how to name it in messages (``name_of``)."""

    def __init__(self, items: Sequence[Any], labels: Sequence[int], size: int) -> None:
        if len(items) != len(labels):
            raise DatasetError(f"{len(items)} images but {len(labels)} labels")
        self.items, self.size = list(items), size
        self.labels = torch.as_tensor(np.asarray(labels, dtype=np.int64))

    def read(self, i: int) -> str | bytes:
        raise NotImplementedError

    def name_of(self, i: int) -> str:
        return str(self.items[i])

    def subset(self, index: Sequence[int]) -> EncodedImages:
        """The images ``index`` (in that order), as the same kind of source."""
        part = copy.copy(self)
        part.items = [self.items[i] for i in index]
        part.labels = self.labels[torch.as_tensor(list(index), dtype=torch.long)]
        return part

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[Tensor, str]:
        try:
            return torch.from_numpy(decode_image(self.read(i), self.size)).permute(2, 0, 1).contiguous(), ""
        except Exception as err:
            return torch.zeros(3, self.size, self.size, dtype=torch.uint8), f"{type(err).__name__}: {err}"


class ImageFiles(EncodedImages):
    """Image files: ``items[i]`` is a path."""

    def read(self, i: int) -> str:
        return self.items[i]


@attrs.define
class BadFiles:
    """Policy and record of unreadable files among ``total`` (see the module docstring)."""

    mode: str
    max_fraction: float
    total: int
    found: dict[int, str] = attrs.field(factory=dict)  # index -> path

    def __attrs_post_init__(self) -> None:
        if self.mode not in BAD_FILE_MODES:
            raise DatasetError(f"data.bad_files: unknown mode {self.mode!r}; available: strict, skip")
        if not 0.0 <= self.max_fraction <= 1.0:
            raise DatasetError(f"data.max_bad_fraction: must be in [0, 1], got {self.max_fraction}")

    def report(self, index: int, path: str, error: str) -> None:
        """One unreadable file: raise (strict) or warn the first time (skip). The fraction
        is checked by ``check``, at points every rank reaches together."""
        if self.mode == "strict":
            raise DatasetError(f"{path}: not a readable image ({error}); set data.bad_files=skip "
                               f"to leave unreadable files out")
        if index not in self.found:
            print(f"warning: skipping unreadable image {path} ({error})", file=sys.stderr, flush=True)
            self.found[index] = path

    def merge(self, found: dict[int, str]) -> None:
        """Add what other ranks found (their warnings were theirs to print)."""
        self.found.update(found)
        self.check()

    def check(self) -> None:
        if len(self.found) > self.max_fraction * self.total:
            raise DatasetError(f"data.max_bad_fraction: {len(self.found)} of {self.total} files are "
                               f"unreadable, more than {self.max_fraction:g}; first: "
                               f"{next(iter(self.found.values()))}")


class EncodedBytes(Dataset):
    """The undecoded bytes of ``images``' items, for decoding on the device: item ``i`` is
    ``(uint8 (n_bytes,), error)``; loader workers only read."""

    def __init__(self, images: EncodedImages) -> None:
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[Tensor, str]:
        try:
            source = self.images.read(i)
            data = source if isinstance(source, bytes | bytearray) else Path(source).read_bytes()
            return torch.frombuffer(bytearray(data), dtype=torch.uint8), ""
        except Exception as err:
            return torch.zeros(0, dtype=torch.uint8), f"{type(err).__name__}: {err}"


def _as_lists(items: list[tuple[Tensor, str]]) -> tuple[list[Tensor], list[str]]:
    """Collate of ``EncodedBytes``: byte strings differ in length, so they stay a list."""
    return [b for b, _ in items], [e for _, e in items]


def _resize_square(image: Tensor, size: int) -> Tensor:
    """uint8 ``(3, H, W)`` -> uint8 ``(3, size, size)``: antialiased bicubic, rounded."""
    resized = torch.nn.functional.interpolate(image[None].float(), size=(size, size), mode="bicubic",
                                              antialias=True, align_corners=False)
    return resized[0].round().clamp(0, 255).to(torch.uint8)


def _codec() -> Any:
    try:
        from torchcodec import decoders
    except ImportError:
        raise DatasetError("data.decode=device needs TorchCodec's image decoders: pip install torchcodec "
                           "(or pip install \"metacontrast[decode]\")") from None
    return decoders


def decode_on_device(encoded: list[Tensor], size: int, device: torch.device) -> tuple[Tensor, list[str]]:
    """Decode a batch of encoded images on ``device`` -> (uint8 ``(B, 3, size, size)``
    there, errors (``""`` when fine)). JPEGs go through TorchCodec's ``decode_jpeg``
    together (nvJPEG on a GPU); other formats and failures are decoded one by one
    (``decode_image`` on the CPU); an undecodable item is zeros with its error."""
    decoders = _codec()
    decode_jpeg, decode_image = decoders.decode_jpeg, decoders.decode_image
    images: list[Tensor | None] = [None] * len(encoded)
    errors = [""] * len(encoded)
    jpegs = [i for i, b in enumerate(encoded) if b.numel() >= 3 and b[:3].tolist() == [0xFF, 0xD8, 0xFF]]
    is_jpeg = set(jpegs)
    if jpegs:
        try:
            decoded = decode_jpeg([encoded[i] for i in jpegs], device=device, mode="RGB")
            for i, image in zip(jpegs, decoded, strict=True):
                images[i] = image
        except RuntimeError:
            pass  # a corrupt one among them: each is tried on its own below
    for i, image in enumerate(images):
        if image is not None:
            continue
        try:
            if i in is_jpeg:
                images[i] = decode_jpeg(encoded[i], device=device, mode="RGB")
            else:
                images[i] = decode_image(encoded[i], mode="RGB").to(device)
        except Exception as err:
            lines = str(err).strip().splitlines()
            errors[i] = f"{type(err).__name__}: {lines[-1] if lines else err}"
    out = torch.zeros(len(encoded), 3, size, size, dtype=torch.uint8, device=device)
    for i, image in enumerate(images):
        if image is not None and not errors[i]:
            out[i] = _resize_square(image, size)
    return out, errors


def loader_workers(requested: int) -> int:
    """``data.workers``: -1 = one loader process per CPU core this process may use (at
    most 8), else the number given."""
    if requested >= 0:
        return requested
    import os

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(8, cores))


def _loader(files: Dataset, batches: list[list[int]], workers: int, pin_memory: bool = False,
            collate_fn: Any = None) -> DataLoader:
    return DataLoader(files, batch_sampler=batches, num_workers=workers, pin_memory=pin_memory,
                      persistent_workers=False, prefetch_factor=2 if workers > 0 else None,
                      collate_fn=collate_fn)


def _decode_read(encoded: list[Tensor], read_errors: list[str], size: int,
                 device: torch.device) -> tuple[Tensor, list[str]]:
    images, errors = decode_on_device(encoded, size, device)
    return images, [r or e for r, e in zip(read_errors, errors, strict=True)]


def decode_all(files: EncodedImages, bad: BadFiles, workers: int, chunk: int = 256) -> tuple[Tensor, Tensor]:
    """Decode every file -> (uint8 ``(N', 3, S, S)``, kept indices ``(N',)``): unreadable
    files are reported to ``bad`` and (in skip mode) left out."""
    order = list(range(len(files)))
    batches = [order[i:i + chunk] for i in range(0, len(order), chunk)]
    images, kept = [], []
    for indices, (x, errors) in zip(batches, _loader(files, batches, workers), strict=True):
        ok = [j for j, e in enumerate(errors) if not e]
        for j, e in enumerate(errors):
            if e:
                bad.report(indices[j], files.name_of(indices[j]), e)
        images.append(x[ok])
        kept += [indices[j] for j in ok]
    if not images:
        return torch.zeros(0, 3, files.size, files.size, dtype=torch.uint8), torch.zeros(0, dtype=torch.long)
    return torch.cat(images), torch.as_tensor(kept, dtype=torch.long)


def stream_batches(files: EncodedImages, plan: list[tuple[int, Tensor]], bad: BadFiles,
                   workers: int, pin_memory: bool = False, decode_device: torch.device | None = None
                   ) -> Iterator[tuple[int, Tensor, Tensor]]:
    """Decode the batches of ``plan`` (``(batch_index, sample indices (B,))``) in
    ``workers`` processes, in order -> ``(batch_index, uint8 (B, 3, S, S), indices (B,))``.
    An unreadable file is reported to ``bad`` and its row replaced by the batch's first
    readable image, so every batch keeps its shape (and DDP ranks stay in step).
    ``pin_memory``: page-locked batches, for asynchronous copies to a GPU.
    ``decode_device``: the workers only read the bytes, and the batch is decoded there
    (``decode_on_device``; the images then are on that device)."""
    if not plan:
        return
    batches = [idx.tolist() for _, idx in plan]
    if decode_device is None:
        loader: Any = _loader(files, batches, workers, pin_memory)
    else:
        raw = _loader(EncodedBytes(files), batches, workers, collate_fn=_as_lists)
        loader = (_decode_read(encoded, errors, files.size, decode_device) for encoded, errors in raw)
    for (batch_index, idx), (images, errors) in zip(plan, loader, strict=True):
        failed = [j for j, e in enumerate(errors) if e]
        if failed:
            for j in failed:
                bad.report(int(idx[j]), files.name_of(int(idx[j])), errors[j])
            good = [j for j, e in enumerate(errors) if not e]
            if not good:
                raise DatasetError(f"every image of batch {batch_index} is unreadable, e.g. "
                                   f"{files.name_of(int(idx[0]))}")
            images[failed] = images[good[0]].clone()
        yield batch_index, images, idx
