"""``data.decode=device``: loader workers read the bytes, TorchCodec decodes the batch on
the training device. Checked on the CPU against a per-image reference written
here, against PIL's decoding (the workers' path), and through two training steps."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchcodec.decoders import decode_image

from metacontrast.cli import main
from metacontrast.config import compose_config
from metacontrast.data import DatasetError, load_dataset
from metacontrast.data.files import BadFiles, ImageFiles, decode_on_device, stream_batches
from metacontrast.data.files import decode_image as pil_decode

from .conftest import TINY


def _encoded(fmt: str, seed: int, shape=(20, 28)) -> bytes:
    g = np.random.default_rng(seed)
    pixels = np.clip(g.normal(120, 50, (*shape, 3)), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=fmt, **({"quality": 92} if fmt == "JPEG" else {}))
    return buffer.getvalue()


def _reference(data: bytes, size: int) -> torch.Tensor:
    """One image at a time: decode, then antialiased bicubic to size x size, rounded."""
    image = decode_image(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode="RGB")
    out = torch.nn.functional.interpolate(image[None].float(), size=(size, size), mode="bicubic",
                                          antialias=True, align_corners=False)[0]
    return out.round().clamp(0, 255).to(torch.uint8)


def test_a_batch_decoded_on_the_device_equals_one_image_at_a_time():
    blobs = [_encoded("JPEG", 0), _encoded("PNG", 1, (16, 16)), _encoded("JPEG", 2, (40, 12)), b"\xff\xd8\xffnot"]
    images, errors = decode_on_device([torch.frombuffer(bytearray(b), dtype=torch.uint8) for b in blobs], 16,
                                      torch.device("cpu"))
    assert images.shape == (4, 3, 16, 16) and images.dtype == torch.uint8
    assert errors[:3] == ["", "", ""] and errors[3]  # the broken one alone fails
    for i in range(3):
        assert torch.equal(images[i], _reference(blobs[i], 16)), i
    assert not images[3].any()
    # the same picture as PIL's decoding in the workers (decoders and resamplers differ slightly)
    for i in range(3):
        pil = torch.from_numpy(pil_decode(blobs[i], 16)).permute(2, 0, 1).float()
        assert (images[i].float() - pil).abs().mean() < 4.0, i


def test_streamed_batches_decoded_on_the_device_keep_the_bad_file_policy(tmp_path, capsys):
    paths = []
    for i in range(6):
        path = tmp_path / f"{i}.jpg"
        path.write_bytes(_encoded("JPEG", i) if i != 4 else b"not an image")
        paths.append(str(path))
    files = ImageFiles(paths, list(range(6)), 12)
    plan = [(0, torch.tensor([0, 1, 2])), (1, torch.tensor([3, 4, 5]))]
    bad = BadFiles("skip", 0.5, 6)
    batches = list(stream_batches(files, plan, bad, workers=2, decode_device=torch.device("cpu")))
    assert [b[0] for b in batches] == [0, 1]
    second = batches[1][1]
    assert torch.equal(second[1], second[0])  # the unreadable row takes the batch's first image
    assert torch.equal(batches[0][1][2], _reference(Path(paths[2]).read_bytes(), 12))
    assert list(bad.found) == [4] and "skipping unreadable image" in capsys.readouterr().err
    with pytest.raises(DatasetError, match="not a readable image"):
        list(stream_batches(files, plan, BadFiles("strict", 0.0, 6), workers=0, decode_device=torch.device("cpu")))


def test_two_training_steps_with_device_decoding(tmp_path):
    root = tmp_path / "folder"
    for split, n in (("train", 16), ("test", 4)):
        for cls in range(2):
            (root / split / f"c{cls}").mkdir(parents=True)
            for i in range(n):
                (root / split / f"c{cls}" / f"{i}.jpg").write_bytes(_encoded("JPEG", 100 * cls + i))
    run = tmp_path / "run"
    assert main(["train", *TINY, "data=imagefolder", f"data.root={root}", "data.image_size=16", "data.stream=true",
                 "data.decode=device", "data.workers=1", "trainer.batch_size=8", "evaluation.baselines=[]",
                 f"trainer.run_dir={run}"]) == 0
    assert (run / "results.json").is_file()
    with pytest.raises(DatasetError, match="data.decode: device decoding is for streamed training batches"):
        load_dataset(compose_config([*TINY, "data.decode=device"]).data)
