"""``data=webdataset``: images in tar shards, in the webdataset layout.

A sample is the group of tar members that share a key (the member's path up to the first
dot of its file name): ``000123.jpg`` and ``000123.cls`` are the image and the label of
sample ``000123``. Shards are named by local paths or brace patterns
(``train-{000000..000099}.tar``, expanded by ``braceexpand`` as webdataset does), relative
to ``data.root`` unless absolute.

Each shard's headers are read once (no image is decoded) to note where every image's bytes
lie, and that index is kept (``index_cache_dir()``) for the next run of the same shard;
training then reads any sample directly. So the shards feed the same batch sampler as
every other dataset: a full per-sample shuffle (stronger than shuffling the shard order
and a buffer), disjoint shares for the ranks, decoding in ``data.workers`` loader processes,
and a position that resumes exactly mid-epoch. Shards must be uncompressed tar files
(``.tar``, as webdataset writes them): a compressed tar has no random access.
"""

from __future__ import annotations

import tarfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from metacontrast.data.files import DatasetError, EncodedImages

# (shard path, offset of the member's bytes, size, key)
Member = tuple[str, int, int, str]


class TarImages(EncodedImages):
    """Images stored in tar shards: item ``i`` is read straight from its shard."""

    def read(self, i: int) -> bytes:
        shard, offset, size, _ = self.items[i]
        with open(shard, "rb") as f:
            f.seek(offset)
            return f.read(size)

    def name_of(self, i: int) -> str:
        shard, _, _, key = self.items[i]
        return f"{shard}:{key}"


def expand_shards(pattern: str, root: Path | None, key: str) -> list[str]:
    """The shard paths of ``pattern`` (``;``-separated patterns allowed), each relative to
    ``root`` unless absolute; every one must exist."""
    from braceexpand import braceexpand

    paths: list[str] = []
    for part in (p.strip() for p in pattern.split(";")):
        if not part:
            continue
        for name in braceexpand(part):
            path = Path(name).expanduser()
            if not path.is_absolute() and root is not None:
                path = root / path
            paths.append(str(path))
    if not paths:
        raise DatasetError(f"{key}: no shards named (a path or brace pattern, e.g. train-{{000..009}}.tar)")
    missing = [p for p in paths if not Path(p).is_file()]
    if missing:
        raise DatasetError(f"{key}: {len(missing)} of {len(paths)} shards do not exist, first: {missing[0]}")
    return paths


def _key_and_extension(member_name: str) -> tuple[str, str]:
    folder, _, base = member_name.rpartition("/")
    stem, _, extension = base.partition(".")
    return (f"{folder}/{stem}" if folder else stem), extension.lower()


def index_cache_dir() -> Path:
    """Where shard indexes are kept: ``$METACONTRAST_CACHE_DIR/shard-index``, else
    ``$XDG_CACHE_HOME/metacontrast/shard-index`` (``~/.cache`` by default)."""
    import os

    base = os.environ.get("METACONTRAST_CACHE_DIR") or str(
        Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "metacontrast")
    return Path(base) / "shard-index"


def _cache_path(shard: str, image_extensions: Sequence[str], label_extension: str) -> Path:
    """A shard's index file, named after its path, size, modification time and the
    extensions read: a rewritten shard gets a new index."""
    import hashlib

    stat = Path(shard).stat()
    what = "|".join([str(Path(shard).resolve()), str(stat.st_size), str(stat.st_mtime_ns),
                     ";".join(image_extensions), label_extension])
    return index_cache_dir() / f"{hashlib.sha1(what.encode()).hexdigest()}.npz"


def _index_one(shard: str, image_extensions: Sequence[str], label_extension: str,
               key: str) -> tuple[list[int], list[int], list[str], list[int]]:
    """One shard's samples with an image: (offsets, sizes, keys, labels), in shard order."""
    if not tarfile.is_tarfile(shard):
        raise DatasetError(f"{key}: {shard} is not a tar file")
    samples: dict[str, dict[str, Any]] = {}
    try:
        with tarfile.open(shard, "r:") as tar:
            for info in tar:
                if not info.isfile():
                    continue
                sample_key, extension = _key_and_extension(info.name)
                entry = samples.setdefault(sample_key, {})
                if extension in image_extensions:
                    rank = image_extensions.index(extension)
                    if "image" not in entry or rank < entry["image"][2]:
                        entry["image"] = (info.offset_data, info.size, rank)
                elif extension == label_extension:
                    handle = tar.extractfile(info)
                    entry["label"] = handle.read().decode().strip() if handle else ""
    except tarfile.ReadError as err:
        raise DatasetError(f"{key}: {shard} cannot be read as an uncompressed tar ({err}); "
                           f"webdataset shards are plain .tar files") from None
    offsets, sizes, keys, labels = [], [], [], []
    for sample_key, entry in samples.items():
        if "image" not in entry:
            continue
        if "label" not in entry:
            raise DatasetError(f"{key}: sample {sample_key} of {shard} has no .{label_extension} label "
                               f"(evaluation needs labels; set data.shards.label to its extension)")
        try:
            labels.append(int(entry["label"]))
        except ValueError:
            raise DatasetError(f"{key}: the label of sample {sample_key} of {shard} is "
                               f"{entry['label']!r}, not an integer") from None
        offsets.append(entry["image"][0])
        sizes.append(entry["image"][1])
        keys.append(sample_key)
    return offsets, sizes, keys, labels


def _cached_index(shard: str, image_extensions: Sequence[str], label_extension: str,
                  key: str) -> tuple[list[int], list[int], list[str], list[int]]:
    """``_index_one``, read from the index cache when this very shard was indexed before
    (plain arrays, loaded without pickle), written there otherwise. A cache that cannot be
    written costs only the time to index again next run."""
    import os
    import tempfile

    import numpy as np

    path = _cache_path(shard, image_extensions, label_extension)
    if path.is_file():
        try:
            with np.load(path, allow_pickle=False) as stored:
                return (stored["offsets"].tolist(), stored["sizes"].tolist(), stored["keys"].tolist(),
                        stored["labels"].tolist())
        except (OSError, ValueError, KeyError):
            pass  # a damaged index is made again
    offsets, sizes, keys, labels = _index_one(shard, image_extensions, label_extension, key)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".index.", suffix=".npz", dir=path.parent)
        with os.fdopen(fd, "wb") as f:
            np.savez(f, offsets=np.asarray(offsets, dtype=np.int64), sizes=np.asarray(sizes, dtype=np.int64),
                     keys=np.asarray(keys, dtype=str), labels=np.asarray(labels, dtype=np.int64))
        os.replace(tmp, path)
    except OSError:
        pass
    return offsets, sizes, keys, labels


def index_shards(shards: Sequence[str], image_extensions: Sequence[str], label_extension: str,
                 key: str) -> tuple[list[Member], list[int]]:
    """Every sample of ``shards`` with an image: where its image bytes are, and its label
    (the integer text of its ``label_extension`` member). Samples keep shard order. Each
    shard's index is kept in ``index_cache_dir()`` for the next run."""
    members: list[Member] = []
    labels: list[int] = []
    for shard in shards:
        offsets, sizes, keys, shard_labels = _cached_index(shard, list(image_extensions), label_extension,
                                                           key)
        members += [(shard, o, n, k) for o, n, k in zip(offsets, sizes, keys, strict=True)]
        labels += shard_labels
    if not members:
        raise DatasetError(f"{key}: no samples with a {'/'.join(image_extensions)} image in "
                           f"{len(shards)} shard(s)")
    return members, labels


def load_shards(cfg: Any) -> tuple[TarImages, TarImages, int]:
    """The train and test samples of ``data.shards`` at ``data.image_size``, and the number
    of classes (largest label + 1)."""
    shards = cfg.shards
    root = Path(cfg.root).expanduser() if cfg.root else None
    extensions = [e.strip().lower().lstrip(".") for e in str(shards.image).split(";") if e.strip()]
    if not extensions:
        raise DatasetError("data.shards.image: name the image extensions, e.g. jpg;jpeg;png;webp")
    label = str(shards.label).strip().lower().lstrip(".")
    size = int(cfg.image_size)
    if size <= 0:
        raise DatasetError("data.image_size: webdataset needs a fixed size, e.g. data.image_size=64")
    splits = []
    for split in ("train", "test"):
        key = f"data.shards.{split}"
        paths = expand_shards(str(getattr(shards, split)), root, key)
        members, labels = index_shards(paths, extensions, label, key)
        splits.append(TarImages(members, labels, size))
    train, test = splits
    num_classes = int(max(int(train.labels.max()), int(test.labels.max()))) + 1
    return train, test, num_classes
