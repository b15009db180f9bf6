"""``data=webdataset``: images in tar shards, in the webdataset layout.

A sample is the group of tar members that share a key (the member's path up to the first
dot of its file name): ``000123.jpg`` and ``000123.cls`` are the image and the label of
sample ``000123``. Shards are named by local paths or brace patterns
(``train-{000000..000099}.tar``, expanded by ``braceexpand`` as webdataset does), relative
to ``data.root`` unless absolute.

Each shard's headers are read once (no image is decoded) to note where every image's bytes
lie; training then reads any sample directly. So the shards feed the same batch sampler as
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


def index_shards(shards: Sequence[str], image_extensions: Sequence[str], label_extension: str,
                 key: str) -> tuple[list[Member], list[int]]:
    """Every sample of ``shards`` with an image: where its image bytes are, and its label
    (the integer text of its ``label_extension`` member). Samples keep shard order."""
    members: list[Member] = []
    labels: list[int] = []
    for shard in shards:
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
                    if extension in image_extensions and "image" not in entry:
                        entry["image"] = (info.offset_data, info.size, image_extensions.index(extension))
                    elif extension in image_extensions:
                        rank = image_extensions.index(extension)
                        if rank < entry["image"][2]:
                            entry["image"] = (info.offset_data, info.size, rank)
                    elif extension == label_extension:
                        handle = tar.extractfile(info)
                        entry["label"] = handle.read().decode().strip() if handle else ""
        except tarfile.ReadError as err:
            raise DatasetError(f"{key}: {shard} cannot be read as an uncompressed tar ({err}); "
                               f"webdataset shards are plain .tar files") from None
        for sample_key, entry in samples.items():
            if "image" not in entry:
                continue
            if "label" not in entry:
                raise DatasetError(f"{key}: sample {sample_key} of {shard} has no .{label_extension} label "
                                   f"(evaluation needs labels; set data.shards.label to its extension)")
            try:
                label = int(entry["label"])
            except ValueError:
                raise DatasetError(f"{key}: the label of sample {sample_key} of {shard} is "
                                   f"{entry['label']!r}, not an integer") from None
            offset, size, _ = entry["image"]
            members.append((shard, offset, size, sample_key))
            labels.append(label)
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
