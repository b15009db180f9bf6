"""Each method the tables compose with runs two CPU steps; mismatched components are
refused naming the key."""

from __future__ import annotations

import json

import numpy as np
import pytest

from metacontrast.config import ConfigError, compose_config
from metacontrast.trainer import fit

BASE = ["trainer=debug", "trainer.device=cpu", "trainer.resume=never", "trainer.batch_size=16",
        "trainer.max_steps=2", "eval.knn.k=5", "eval.linear.max_iter=5", "eval.few_labels.steps=2",
        "eval.few_labels.splits=2", "eval.few_labels.labelled=10"]


@pytest.mark.parametrize("encoder", ["tabular_mlp", "tabular_transformer"])
@pytest.mark.parametrize("method", ["simclr", "r2d2", "protonet", "byol"])
def test_methods_run_two_steps_on_a_table(method, encoder, tmp_path):
    cfg = compose_config([*BASE, "data=tabular/wine", f"method={method}", f"encoder={encoder}",
                          f"trainer.run_dir={tmp_path}"])
    results = fit(cfg)
    assert results["steps"] == 2 and results["dataset"] == "wine"  # the table, not the adapter
    rows = [json.loads(r) for r in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert np.isfinite(rows[-1]["loss"])
    final = results["metrics"]["pretrained"]
    assert 0.0 <= final["few_labels_accuracy"] <= 1.0 and "knn_top1" in final


@pytest.mark.parametrize(("override", "key"), [("views=simclr_small", "views.name"),
                                               ("encoder=conv4", "encoder.name"),
                                               ("eval=[semi_supervised]", "eval.semi_supervised.name")])
def test_image_components_are_refused_on_a_table(override, key, tmp_path):
    base = [o for o in BASE if not (override.startswith("eval") and o.startswith("eval."))]
    cfg = compose_config([*base, "data=tabular/wine", override, f"trainer.run_dir={tmp_path}"])
    with pytest.raises(ConfigError, match=rf"{key}: .* works on image data, but the data are of kind 'table'"):
        fit(cfg)
    assert not any(tmp_path.iterdir())
