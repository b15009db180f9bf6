"""Dataset adapters: each returns an ``ImageData`` of uint8 ``(N, C, H, W)`` tensors.

Adapters: ``digits`` (scikit-learn's bundled 8x8 digits, upsampled; needs no file and no
network), the torchvision datasets ``cifar10``, ``cifar100``, ``stl10``, ``mnist``,
``fashionmnist`` read from ``data.root``, ``imagefolder`` and a generic ``npz``.

``imagefolder``, ``webdataset`` (tar shards, ``metacontrast.data.shards``) and ``hf`` (a
Hugging Face dataset, ``metacontrast.data.hf``) are encoded images, decoded by
``data.workers`` loader processes with the unreadable-file policy of ``data.bad_files``;
with ``data.stream=true`` their training images are decoded batch by batch while training
(see ``metacontrast.data.files``) and only the evaluation subset is held in memory.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import attrs
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from metacontrast.data.files import (
    BadFiles,
    DatasetError,
    EncodedImages,
    ImageFiles,
    check_split,
    decode_all,
    loader_workers,
)
from metacontrast.data.tables import TabularData, load_table
from metacontrast.imageops import normalize


@attrs.frozen(eq=False)
class ImageData:
    """Train and test images ``(N, C, H, W)`` uint8 with int64 labels ``(N,)``;
    ``mean``/``std`` per channel in [0, 1] units. ``train_x``/``test_x``: the images,
    under the names the trainer reads from any dataset (``TabularData`` too)."""

    KIND: ClassVar[str] = "image"

    name: str
    train_images: Tensor
    train_labels: Tensor
    test_images: Tensor
    test_labels: Tensor
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    # streamed training set (train_images then hold only the evaluation subset)
    train_files: EncodedImages | None = None
    bad_files: BadFiles | None = None

    @property
    def num_train(self) -> int:
        """How many images training draws from."""
        return len(self.train_files) if self.train_files is not None else int(self.train_images.shape[0])

    @property
    def unreadable_files(self) -> list[str]:
        return sorted(self.bad_files.found.values()) if self.bad_files is not None else []

    def __attrs_post_init__(self) -> None:
        for split in ("train", "test"):
            x, y = getattr(self, f"{split}_images"), getattr(self, f"{split}_labels")
            ok = x.dtype == torch.uint8 and x.dim() == 4
            check_split(self.name, split, x, y, ok, "uint8 (N, C, H, W) images")

    @property
    def train_x(self) -> Tensor:
        return self.train_images

    @property
    def test_x(self) -> Tensor:
        return self.test_images

    def context_facts(self) -> dict[str, Any]:
        """What components are built with (``BuildContext`` fields)."""
        return {"in_channels": self.channels, "image_size": self.image_size, "mean": self.mean,
                "std": self.std, "modality": self.KIND}

    def raw_features(self, images: Tensor) -> Tensor:
        """The no-encoder baseline: normalised pixels flattened to ``(N, C * H * W)``."""
        return normalize(images, self.mean, self.std).flatten(1)

    @property
    def channels(self) -> int:
        return int(self.train_images.shape[1])

    @property
    def image_size(self) -> int:
        return int(self.train_images.shape[2])

    def to(self, device: torch.device) -> ImageData:
        """The in-memory tensors on ``device`` (streamed files stay files)."""
        return attrs.evolve(self, **{k: getattr(self, k).to(device) for k in
                                     ("train_images", "train_labels", "test_images", "test_labels")})


Arrays = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]


def _require_root(cfg: Any) -> Path:
    if not cfg.root:
        raise DatasetError(f"data.root: dataset {cfg.name!r} needs a directory; "
                           f"set data.root=/path/to/{cfg.name}")
    root = Path(str(cfg.root)).expanduser()
    if not root.exists():
        raise DatasetError(f"data.root: {root} does not exist (dataset {cfg.name!r})")
    return root


def _digits(cfg: Any) -> Arrays:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = (bunch.images / 16.0 * 255.0).round().astype(np.uint8)[:, None]  # (N, 1, 8, 8)
    y = bunch.target.astype(np.int64)
    order = np.random.default_rng(cfg.seed).permutation(len(y))
    n_test = 500
    test, train = order[:n_test], order[n_test:]
    return x[train], y[train], x[test], y[test]


def _npz_arrays(path: Path) -> Arrays:
    try:
        with np.load(path, allow_pickle=False) as z:
            missing = [k for k in ("x_train", "y_train", "x_test", "y_test") if k not in z.files]
            if missing:
                raise DatasetError(f"data.root: {path} lacks {', '.join(missing)} (has "
                                   f"{', '.join(z.files)})")
            return z["x_train"], z["y_train"], z["x_test"], z["y_test"]
    except (OSError, ValueError) as err:
        if isinstance(err, DatasetError):
            raise
        raise DatasetError(f"data.root: {path} is not a readable .npz: {err}") from None


def _npz(cfg: Any) -> Arrays:
    root = _require_root(cfg)
    if root.is_dir():
        found = sorted(root.glob("*.npz"))
        if len(found) != 1:
            raise DatasetError(f"data.root: {root} must be an .npz file or a folder holding "
                               f"exactly one, found {len(found)}")
        root = found[0]
    return _npz_arrays(root)


def _torchvision(cls_name: str, npz_name: str | None = None) -> Callable[[Any], Arrays]:
    def load(cfg: Any) -> Arrays:
        root = _require_root(cfg) if not cfg.download else Path(str(cfg.root or ".cache/data"))
        if npz_name is not None:  # the layout of ../shared/data/prepare.py
            for candidate in (root / npz_name, root / Path(npz_name).name):
                if candidate.is_file():
                    return _npz_arrays(candidate)
        import torchvision

        cls = getattr(torchvision.datasets, cls_name)
        try:
            if cls_name == "STL10":
                splits = [cls(str(root), split=s, download=cfg.download) for s in ("train", "test")]
            else:
                splits = [cls(str(root), train=t, download=cfg.download) for t in (True, False)]
        except RuntimeError as err:
            raise DatasetError(f"data.root: {cls_name} not found under {root} ({err}); pass "
                               f"data.download=true when online") from None
        out: list[np.ndarray] = []
        for ds in splits:
            x = np.asarray(ds.data)
            y = np.asarray(getattr(ds, "targets", getattr(ds, "labels", None)), dtype=np.int64)
            out += [x, y]
        return out[0], out[1], out[2], out[3]

    return load


def _folder_split(root: Path, split: str) -> tuple[list[str], list[int], list[str]]:
    from torchvision.datasets import ImageFolder

    if not (root / split).is_dir():
        raise DatasetError(f"data.root: {root} must hold train/ and test/ class folders; "
                           f"{root / split} is missing")
    # ImageFolder lists files by extension only; nothing is decoded here
    folder = ImageFolder(str(root / split), loader=lambda path: path)
    return [p for p, _ in folder.samples], list(folder.targets), folder.classes


def subset_indices(n: int, limit: int, seed: int) -> Tensor:
    """A fixed random subset of ``limit`` of ``range(n)``, sorted (all when ``limit`` is 0
    or at least ``n``): train/test caps and the evaluation's labelled subset."""
    if limit <= 0 or limit >= n:
        return torch.arange(n)
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:limit].sort().values


def _imagefolder(cfg: Any) -> tuple[ImageFiles, ImageFiles, int]:
    """``root/train/<class>/*`` and ``root/test/<class>/*`` at ``data.image_size``."""
    root = _require_root(cfg)
    if not cfg.image_size:
        raise DatasetError("data.image_size: imagefolder needs a fixed size, e.g. data.image_size=64")
    train_paths, train_y, classes = _folder_split(root, "train")
    test_paths, test_y, test_classes = _folder_split(root, "test")
    if test_classes != classes:
        raise DatasetError(f"data.root: {root}/test has classes {test_classes}, train has {classes}")
    size = int(cfg.image_size)
    return ImageFiles(train_paths, train_y, size), ImageFiles(test_paths, test_y, size), len(classes)


def _webdataset(cfg: Any) -> tuple[EncodedImages, EncodedImages, int]:
    from metacontrast.data.shards import load_shards

    return load_shards(cfg)


def _hf(cfg: Any) -> tuple[EncodedImages, EncodedImages, int]:
    from metacontrast.data.hf import load_hf

    return load_hf(cfg)


# sources of encoded images, decoded by loader workers (held in memory, or streamed)
ENCODED_SOURCES: dict[str, Callable[[Any], tuple[EncodedImages, EncodedImages, int]]] = {
    "imagefolder": _imagefolder, "webdataset": _webdataset, "hf": _hf}


def _load_encoded(cfg: Any, train_files: EncodedImages, test_files: EncodedImages, num_classes: int,
                  eval_train_index: Any) -> ImageData:
    """Decode encoded images (``data.train_subset``/``test_subset`` first, a seeded choice
    in source order) with ``data.workers`` loader processes and the ``data.bad_files``
    policy; streamed: only the evaluation's labelled train subset is decoded now."""
    seed = int(cfg.seed)
    train_files = train_files.subset(subset_indices(len(train_files), int(cfg.train_subset), seed).tolist())
    test_files = test_files.subset(subset_indices(len(test_files), int(cfg.test_subset), seed + 1).tolist())
    workers = loader_workers(int(cfg.workers))
    bad = BadFiles(str(cfg.bad_files), float(cfg.max_bad_fraction), len(train_files) + len(test_files))
    if cfg.stream:  # hold only the labelled images evaluation uses
        subset = train_files.subset(eval_train_index(len(train_files)).tolist())
        train, kept = decode_all(subset, bad, workers)
        train_labels = subset.labels[kept]
    else:
        train, kept = decode_all(train_files, bad, workers)
        train_labels = train_files.labels[kept]
    test, test_kept = decode_all(test_files, bad, workers)
    bad.check()
    return _finish(cfg, train, train_labels, test, test_files.labels[test_kept],
                   num_classes=num_classes, train_files=train_files if cfg.stream else None,
                   bad_files=bad)


OMNIGLOT_TEST_ALPHABETS = 3


def _omniglot(cfg: Any) -> Arrays:
    """``root/omniglot/<Alphabet>__<character>/*.png`` (the layout of
    ../shared/data/prepare.py; ``root`` may also be that folder itself). Characters are
    the classes; the last 3 alphabets (sorted by name) form the test split, so few-shot
    evaluation meets alphabets never seen in pre-training."""
    from PIL import Image

    root = _require_root(cfg)
    folder = root / "omniglot" if (root / "omniglot").is_dir() else root
    classes = sorted(p for p in folder.iterdir() if p.is_dir() and "__" in p.name)
    if not classes:
        raise DatasetError(f"data.root: no <Alphabet>__<character> folders under {folder}")
    alphabets = sorted({c.name.split("__")[0] for c in classes})
    held_out = set(alphabets[-OMNIGLOT_TEST_ALPHABETS:])
    size = int(cfg.image_size) or 28
    splits: dict[bool, tuple[list[np.ndarray], list[int]]] = {False: ([], []), True: ([], [])}
    for label, cls in enumerate(classes):
        images, labels = splits[cls.name.split("__")[0] in held_out]
        for path in sorted(cls.glob("*.png")):
            try:
                with Image.open(path) as im:
                    images.append(np.asarray(im.convert("L").resize((size, size), Image.Resampling.BILINEAR)))
            except OSError as err:
                raise DatasetError(f"{path}: not a readable image ({err})") from None
            labels.append(label)
    (x_tr, y_tr), (x_te, y_te) = splits[False], splits[True]
    return np.stack(x_tr), np.asarray(y_tr), np.stack(x_te), np.asarray(y_te)


ADAPTERS: dict[str, Callable[[Any], Arrays]] = {
    "omniglot": _omniglot,
    "digits": _digits,
    "cifar10": _torchvision("CIFAR10", "cifar10/cifar10.npz"),
    "cifar100": _torchvision("CIFAR100"),
    "stl10": _torchvision("STL10"),
    "mnist": _torchvision("MNIST"),
    "fashionmnist": _torchvision("FashionMNIST"),
    "npz": _npz,
}
DEFAULT_SIZES = {"digits": 32}


def _to_nchw(x: np.ndarray, name: str, split: str) -> Tensor:
    if x.dtype != np.uint8:
        raise DatasetError(f"{name}: {split} images must be uint8, got {x.dtype}")
    if x.ndim == 3:
        x = x[:, None]
    elif x.ndim == 4 and x.shape[-1] in (1, 3) and x.shape[1] not in (1, 3):
        x = x.transpose(0, 3, 1, 2)
    elif x.ndim != 4:
        raise DatasetError(f"{name}: {split} images must be (N, H, W), (N, H, W, C) or "
                           f"(N, C, H, W), got {x.shape}")
    return torch.from_numpy(np.ascontiguousarray(x))


def _resize(x: Tensor, size: int) -> Tensor:
    if size <= 0 or (x.shape[2] == size and x.shape[3] == size):
        return x
    mode = "bilinear" if size > x.shape[2] else "area"
    y = F.interpolate(x.float(), size=(size, size), mode=mode)
    return y.round().clamp(0, 255).to(torch.uint8)


def _subset(x: Tensor, y: Tensor, n: int, seed: int) -> tuple[Tensor, Tensor]:
    if n <= 0 or n >= x.shape[0]:
        return x, y  # no copy of a whole dataset
    keep = subset_indices(x.shape[0], n, seed)
    return x[keep], y[keep]


def load_dataset(cfg: Any, eval_train_index: Any = None) -> ImageData | TabularData:
    """Read the dataset that the ``data`` config section names (on the CPU): images, or
    the rows of a table for ``data.name=tabular``.
    ``eval_train_index(n) -> indices``: which of ``n`` train images evaluation uses (only
    consulted when streaming, to decode just those)."""
    if cfg.name == "tabular":
        return load_table(cfg)
    if cfg.stream and cfg.name not in ENCODED_SOURCES:
        raise DatasetError(f"data.stream: only {', '.join(ENCODED_SOURCES)} stream from files; "
                           f"{cfg.name!r} is held in memory")
    if str(cfg.decode) == "device" and not (cfg.stream and cfg.name in ENCODED_SOURCES):
        raise DatasetError("data.decode: device decoding is for streamed training batches of encoded "
                           f"images ({', '.join(ENCODED_SOURCES)} with data.stream=true)")
    if cfg.name in ENCODED_SOURCES:
        if cfg.stream and eval_train_index is None:
            raise DatasetError("data.stream: the caller must say which train images evaluation uses")
        return _load_encoded(cfg, *ENCODED_SOURCES[str(cfg.name)](cfg), eval_train_index)
    adapter = ADAPTERS.get(str(cfg.name))
    if adapter is None:
        raise DatasetError(f"data.name: unknown dataset {cfg.name!r}; available: "
                           f"{', '.join(sorted([*ADAPTERS, 'imagefolder', 'tabular']))}")
    x_tr, y_tr, x_te, y_te = adapter(cfg)
    size = cfg.image_size or DEFAULT_SIZES.get(str(cfg.name), 0)
    train = _resize(_to_nchw(x_tr, cfg.name, "train"), size)
    test = _resize(_to_nchw(x_te, cfg.name, "test"), size)
    train_y = torch.as_tensor(np.asarray(y_tr, dtype=np.int64))
    test_y = torch.as_tensor(np.asarray(y_te, dtype=np.int64))
    train, train_y = _subset(train, train_y, cfg.train_subset, cfg.seed)
    test, test_y = _subset(test, test_y, cfg.test_subset, cfg.seed + 1)
    num_classes = int(max(train_y.max(), test_y.max())) + 1 if len(train_y) else 0
    return _finish(cfg, train, train_y, test, test_y, num_classes=num_classes)


def _finish(cfg: Any, train: Tensor, train_y: Tensor, test: Tensor, test_y: Tensor, *,
            num_classes: int, **extra: Any) -> ImageData:
    """Per-channel statistics (given, or measured on the train images held) -> ImageData."""
    if len(cfg.mean) and len(cfg.std):
        mean, std = tuple(float(m) for m in cfg.mean), tuple(float(s) for s in cfg.std)
        if len(mean) != train.shape[1] or len(std) != train.shape[1]:
            raise DatasetError(f"data.mean/data.std: need {train.shape[1]} values each, got "
                               f"{len(mean)} and {len(std)}")
    else:
        if train.shape[0] == 0:
            raise DatasetError(f"{cfg.name}: no readable train images to measure data.mean/data.std on")
        xf = train.float() / 255.0
        mean = tuple(xf.mean(dim=(0, 2, 3)).tolist())
        std = tuple(xf.std(dim=(0, 2, 3)).clamp_min(1e-3).tolist())
    return ImageData(name=str(cfg.name), train_images=train, train_labels=train_y,
                     test_images=test, test_labels=test_y, num_classes=num_classes,
                     mean=mean, std=std, **extra)
