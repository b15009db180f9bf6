"""Shared fixtures: small configs, a fresh plugin manager, the real-data location."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO.parent / "shared" / "data"
PREPARED = Path(os.environ.get("METACONTRAST_TEST_DATA", REPO / ".cache" / "data"))

# Where the runs of the tests train: the CPU, or the GPU where one is lent
# (METACONTRAST_TEST_DEVICE=cuda runs every config's two steps there, checking placement).
TEST_DEVICE = os.environ.get("METACONTRAST_TEST_DEVICE", "cpu")

# The tests compare runs bit for bit (goldens, exact resume, 2 ranks == 1) on a machine
# that other jobs share: the thread count stays the one chosen at the start
# (METACONTRAST_THREAD_POLICY=fixed) instead of following the load; subprocesses inherit
# it. test_threads.py runs the default policy.
os.environ.setdefault("METACONTRAST_THREAD_POLICY", "fixed")

# Tracking services stay on this machine, as a user's own settings would keep them: W&B
# offline (its files under the run directory, its own settings and caches in a scratch
# folder) and MLflow on a local file store; subprocesses inherit these.
_TRACKING = Path(tempfile.mkdtemp(prefix="metacontrast-tracking-"))
for _key, _value in {"WANDB_MODE": "offline", "WANDB_SILENT": "true", "WANDB_CONSOLE": "off",
                     "WANDB_CONFIG_DIR": str(_TRACKING / "wandb"), "WANDB_CACHE_DIR": str(_TRACKING / "wandb"),
                     "WANDB_DATA_DIR": str(_TRACKING / "wandb"), "MLFLOW_TRACKING_URI": (_TRACKING / "mlruns").as_uri(),
                     "MLFLOW_ALLOW_FILE_STORE": "true"}.items():
    os.environ.setdefault(_key, _value)


@pytest.fixture(scope="session", autouse=True)
def scratch_cache(tmp_path_factory: pytest.TempPathFactory):
    """Caches the runs keep (the shard indexes of data=webdataset) go to a scratch
    directory, never the user's ~/.cache; subprocesses inherit it."""
    before = os.environ.get("METACONTRAST_CACHE_DIR")
    os.environ["METACONTRAST_CACHE_DIR"] = str(tmp_path_factory.mktemp("cache"))
    yield
    if before is None:
        os.environ.pop("METACONTRAST_CACHE_DIR", None)
    else:
        os.environ["METACONTRAST_CACHE_DIR"] = before


# The smallest honest run: digits, Conv-4, 2 steps of 16 images on the CPU, quick eval.
TINY = [
    "experiment=digits_simclr", "trainer=debug", f"trainer.device={TEST_DEVICE}", "trainer.resume=never",
    "eval.knn.k=5", "eval.linear.max_iter=5", "evaluation.train_subset=200",
    "data.test_subset=100", "trainer.batch_size=16", "trainer.max_steps=2", "trainer.epochs=1", "logger=[jsonl]",
]


# Every method on small colour images (``colour_npz``), with the views of its CIFAR recipe;
# CLSA's strong views at sizes a Conv-4 with average pooling still reads.
STRONG = ["encoder.pool=avg", "views.strong_sizes=[16]"]
METHODS_ON_COLOUR = {
    "simclr": ["views=simclr_cifar"],
    "protonet": ["method=protonet", "views=simclr_cifar"],
    "r2d2": ["method=r2d2", "views=simclr_cifar"],
    "byol": ["method=byol", "views=simclr_cifar"],
    "moco_v2": ["method=moco_v2", "views=moco_v2_cifar"],
    "clsa_single": ["method=clsa_single", "views=clsa_single_cifar", *STRONG],
    "clsa_multi": ["method=clsa_multi", "views=clsa_multi_cifar", *STRONG, "views.strong_sizes=[24,16]"],
    "metaug": ["experiment=metaug_cifar10/metaug", "encoder.width=0.125", "memory.read_size=64"],
}


@pytest.fixture(scope="session")
def colour_npz(tmp_path_factory: pytest.TempPathFactory) -> str:
    """An ``.npz`` of 96 training and 16 test random colour images, 32 x 32, 4 classes."""
    import numpy as np

    g = np.random.default_rng(0)
    path = tmp_path_factory.mktemp("colour") / "colour.npz"
    np.savez(path, x_train=g.integers(0, 256, (96, 32, 32, 3), dtype=np.uint8), y_train=g.integers(0, 4, 96),
             x_test=g.integers(0, 256, (16, 32, 32, 3), dtype=np.uint8), y_test=g.integers(0, 4, 16))
    return str(path)


@pytest.fixture(scope="session")
def prepared_data() -> Path:
    """The real datasets unpacked by ../shared/data/prepare.py (done once, ~10 s)."""
    if not (PREPARED / "cifar10" / "cifar10.npz").is_file():
        if not (SHARED_DATA / "prepare.py").is_file():
            pytest.skip("../shared/data is not present")
        import subprocess
        import sys

        subprocess.run([sys.executable, str(SHARED_DATA / "prepare.py"), str(PREPARED)], check=True,
                       capture_output=True)
    return PREPARED


@pytest.fixture
def tiny_overrides(tmp_path: Path) -> list[str]:
    return [*TINY, f"trainer.run_dir={tmp_path / 'run'}"]


def make_image_folder(root: Path, classes: int = 3, train_per_class: int = 8, test_per_class: int = 2,
                      size: int = 12, seed: int = 0) -> Path:
    """``root/{train,test}/c<k>/<i>.png``: noisy images whose mean colour depends on the
    class. Returns ``root``."""
    import numpy as np
    from PIL import Image

    g = np.random.default_rng(seed)
    for split, per_class in (("train", train_per_class), ("test", test_per_class)):
        for k in range(classes):
            folder = root / split / f"c{k}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                base = np.array([80 * k % 256, 255 - 60 * k % 256, 40 * k % 256], dtype=np.int64)
                pixels = np.clip(base + g.integers(-40, 40, (size, size, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"{i:03d}.png")
    return root


def add_bad_files(folder: Path) -> dict[str, Path]:
    """Three unreadable files in ``folder``: a truncated JPEG, a 0-byte file and a text
    file named ``.jpg``."""
    import io

    import numpy as np
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.full((16, 16, 3), 128, np.uint8)).save(buffer, format="JPEG")
    bad = {"corrupt": folder / "corrupt.jpg", "empty": folder / "empty.jpg", "text": folder / "text.jpg"}
    bad["corrupt"].write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    bad["empty"].write_bytes(b"")
    bad["text"].write_text("this is not an image\n")
    return bad


class Interrupted(Exception):
    """Raised by ``interrupt_at``'s plugin: a run stopped at a chosen step, in-process."""


def interrupt_at(step: int):
    """A plugin module that raises ``Interrupted`` at the end of optimizer step ``step``."""
    from metacontrast import hookimpl
    from metacontrast.plugins import as_module

    @hookimpl
    def metacontrast_on_step_end(state):
        if state.step == step:
            raise Interrupted(f"stopped at step {step}")

    return as_module(f"interrupt_at_{step}", metacontrast_on_step_end=metacontrast_on_step_end)


@pytest.fixture
def small_tmpfs(tmp_path: Path):
    """A real 4 MiB tmpfs (a disk that fills up), where this machine lets the tests mount
    one (as root); skipped elsewhere, where the simulated full disk still runs."""
    import subprocess

    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root; the simulated full disk covers this")
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def fail_with_enospc(monkeypatch: pytest.MonkeyPatch, module) -> None:
    """Make the temporary files ``module`` writes (through ``tempfile.mkstemp``) go to
    ``/dev/full``: every write fails as on a full disk (the kernel's own ``ENOSPC``);
    nothing else is mocked, other modules write as before."""
    import tempfile

    real = tempfile.mkstemp

    def on_full_device(*args, **kwargs):
        fd, name = real(*args, **kwargs)
        full = os.open("/dev/full", os.O_WRONLY)
        os.dup2(full, fd)
        os.close(full)
        return fd, name

    import types

    monkeypatch.setattr(module, "tempfile", types.SimpleNamespace(mkstemp=on_full_device))
