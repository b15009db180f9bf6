"""The W&B logger's settings and the offline-log reader (a log W&B itself wrote, read back
whole, cut short as a killed process leaves it, and with a damaged record)."""

from __future__ import annotations

import pytest

from metacontrast.interfaces import RunStart
from metacontrast_wandb.logger import WandbConfig, WandbLogger
from metacontrast_wandb.offline import BLOCK, offline_files, offline_history

wandb = pytest.importorskip("wandb")


def test_bad_settings_name_themselves():
    with pytest.raises(ValueError, match="mode: 'onlin' is not a W&B mode"):
        WandbConfig(mode="onlin")
    with pytest.raises(ValueError, match="rows: 'sometimes'; choose checkpointed or live"):
        WandbConfig(rows="sometimes")
    assert WandbLogger(WandbConfig(rows="live"), None).live and not WandbLogger(WandbConfig(), None).live


@pytest.fixture
def offline_run(tmp_path, monkeypatch):
    """A run of 300 rows written by W&B in offline mode through the logger (more than one
    32 KiB block)."""
    for key, value in {"WANDB_SILENT": "true", "WANDB_CONSOLE": "off", "WANDB_CONFIG_DIR": str(tmp_path / "c"),
                       "WANDB_CACHE_DIR": str(tmp_path / "c"), "WANDB_DATA_DIR": str(tmp_path / "c")}.items():
        monkeypatch.setenv(key, value)
    logger = WandbLogger(WandbConfig(mode="offline", rows="live"), None)
    logger.start(RunStart(run_dir=tmp_path, config={"trainer": {"seed": 0}}, step=0, total_steps=300,
                          resumed=False))
    for step in range(1, 301):
        logger.log_metrics({"step": step, "loss": 1.0 / step, "loss/nt_xent": 2.0 / step})
    logger.close("finished")
    (path,) = offline_files(tmp_path)
    return tmp_path, path


def test_the_reader_gives_back_every_row_wandb_wrote(offline_run):
    run_dir, path = offline_run
    assert path.stat().st_size > BLOCK  # records span blocks
    rows = [r for r in offline_history(run_dir) if "loss" in r]
    assert [r["_step"] for r in rows] == list(range(1, 301))
    assert all(r["loss"] == pytest.approx(1.0 / r["_step"]) and r["loss/nt_xent"] == pytest.approx(2.0 / r["_step"])
               for r in rows)
    assert (run_dir / "wandb_run.json").is_file()


def test_a_log_cut_short_or_damaged_ends_where_its_last_good_record_does(offline_run):
    run_dir, path = offline_run
    data = path.read_bytes()
    path.write_bytes(data[:BLOCK + 1000])  # a kill in the second block
    cut = [r["_step"] for r in offline_history(run_dir) if "loss" in r]
    assert cut == list(range(1, len(cut) + 1)) and 0 < len(cut) < 300
    damaged = bytearray(data)
    damaged[BLOCK // 2] ^= 0xFF  # one flipped byte inside a record of the first block
    path.write_bytes(bytes(damaged))
    kept = [r["_step"] for r in offline_history(run_dir) if "loss" in r]
    assert kept == list(range(1, len(kept) + 1)) and len(kept) < len(cut)


def test_a_service_another_process_started_is_not_shared(monkeypatch):
    """The parent's service would keep a killed run registered (its resume refused)."""
    import os

    from metacontrast_wandb.logger import own_service

    monkeypatch.setenv("WANDB_SERVICE", f"2-{os.getpid() + 1}-unix-/tmp/wandb-service.sock")
    own_service()
    assert "WANDB_SERVICE" not in os.environ
    mine = f"2-{os.getpid()}-unix-/tmp/wandb-service.sock"
    monkeypatch.setenv("WANDB_SERVICE", mine)
    own_service()
    assert os.environ["WANDB_SERVICE"] == mine
