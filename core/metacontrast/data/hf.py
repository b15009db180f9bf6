"""``data=hf``: a Hugging Face ``datasets`` dataset of images.

``data.root`` is a directory written by ``DatasetDict.save_to_disk`` (read with
``datasets.load_from_disk``), or the name of a hub dataset already in the local cache
(``datasets.load_dataset(name, cache_dir=data.hf.cache_dir)``; nothing is fetched when
offline: set ``HF_DATASETS_OFFLINE=1``). ``data.hf.train``/``test`` name the splits,
``image``/``label`` the columns. The datasets are memory-mapped Arrow tables with random
access, so they feed the same batch sampler, loader workers, unreadable-image policy and
exact mid-epoch resume as image folders. Images are read as their encoded bytes and
decoded like any image file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from metacontrast.data.files import DatasetError, EncodedImages


class HFImages(EncodedImages):
    """Rows of a ``datasets.Dataset`` whose image column holds encoded images: item ``i``
    is row ``items[i]``."""

    def __init__(self, dataset: Any, column: str, rows: list[int], labels: list[int], size: int,
                 name: str) -> None:
        super().__init__(rows, labels, size)
        self.dataset, self.column, self.name = dataset, column, name

    def read(self, i: int) -> str | bytes:
        value = self.dataset[int(self.items[i])][self.column]
        if isinstance(value, dict):
            if value.get("bytes"):
                return value["bytes"]
            if value.get("path"):
                return value["path"]
        if isinstance(value, bytes | str):
            return value
        raise OSError(f"column {self.column!r} holds {type(value).__name__}, not an encoded image")

    def name_of(self, i: int) -> str:
        return f"{self.name}[{int(self.items[i])}]"


def _open(cfg: Any) -> Any:
    try:
        import datasets
    except ImportError:
        raise DatasetError("data=hf needs the datasets package: pip install datasets") from None
    root = str(cfg.root or "")
    if not root:
        raise DatasetError("data.root: data=hf needs a saved dataset directory or a hub dataset name")
    if Path(root).expanduser().is_dir():
        try:
            return datasets.load_from_disk(str(Path(root).expanduser()))
        except Exception as err:
            raise DatasetError(f"data.root: {root} is not a saved datasets directory ({err})") from None
    try:
        return datasets.load_dataset(root, cache_dir=str(cfg.hf.cache_dir) or None)
    except Exception as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise DatasetError(f"data.root: {root!r} is neither a directory nor a dataset in the hub cache "
                           f"({first})") from None


def _split(found: Any, name: str, key: str, cfg: Any) -> HFImages:
    import datasets

    if not isinstance(found, datasets.DatasetDict):
        raise DatasetError(f"data.root: {cfg.root} holds one split; save a DatasetDict with "
                           f"{cfg.hf.train!r} and {cfg.hf.test!r} splits")
    if name not in found:
        raise DatasetError(f"{key}: no split {name!r} in {cfg.root}; splits: {', '.join(found)}")
    split = found[name]
    image, label = str(cfg.hf.image), str(cfg.hf.label)
    for column, what in ((image, "image"), (label, "label")):
        if column not in split.column_names:
            raise DatasetError(f"data.hf.{what}: no column {column!r} in split {name!r}; columns: "
                               f"{', '.join(split.column_names)}")
    if isinstance(split.features[image], datasets.Image):
        split = split.cast_column(image, datasets.Image(decode=False))  # encoded bytes, decoded by us
    labels = [int(v) for v in split[label]]
    return HFImages(split, image, list(range(len(split))), labels, int(cfg.image_size),
                    name=f"{cfg.root}:{name}")


def load_hf(cfg: Any) -> tuple[HFImages, HFImages, int]:
    """The train and test splits of ``data.root`` at ``data.image_size``, and the number of
    classes (the label column's class count, else the largest label + 1)."""
    if int(cfg.image_size) <= 0:
        raise DatasetError("data.image_size: data=hf needs a fixed size, e.g. data.image_size=64")
    found = _open(cfg)
    train = _split(found, str(cfg.hf.train), "data.hf.train", cfg)
    test = _split(found, str(cfg.hf.test), "data.hf.test", cfg)
    feature = found[str(cfg.hf.train)].features[str(cfg.hf.label)]
    num_classes = int(getattr(feature, "num_classes", 0) or 0)
    return train, test, max(num_classes, int(max(train.labels.max(), test.labels.max())) + 1)
