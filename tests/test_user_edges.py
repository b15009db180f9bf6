"""What a person reads: phases announced with the precision's reason, the summary table,
the plugin listing's config options, t-SNE projections, run names of tables, top-k only
where it can be missed."""

from __future__ import annotations

import numpy as np
import torch

from metacontrast.classifiers import topk_accuracies
from metacontrast.cli import main
from metacontrast.config import compose_config
from metacontrast.evaluation import project_2d
from metacontrast.phases import precision_reason
from metacontrast.run_dirs import data_label
from metacontrast.summary import summary_lines
from metacontrast.trainer import resolve_precision

from .conftest import TINY


def test_a_run_announces_its_phases_and_why_it_chose_its_precision(tmp_path, capsys):
    assert main(["train", *TINY, "trainer.progress=true", f"trainer.run_dir={tmp_path / 'run'}"]) == 0
    out = capsys.readouterr()
    assert "metacontrast: device cpu, precision " in out.err and "(auto: this CPU" in out.err
    for phase in ("loading data=digits", "evaluating baseline random_init: knn (1/2)",
                  "evaluating baseline random_init: linear (2/2)", "evaluating baseline raw_pixels: knn (1/2)",
                  "evaluating the trained encoder: linear (2/2)"):
        assert f"metacontrast: {phase} ..." in out.err and f"{phase}: done in " in out.err, phase
    assert out.out.startswith(f"run        {tmp_path / 'run'}") and "knn_top1     knn (k=5, vote=weighted, temperature=0.1)" in out.out
    assert main(["train", *TINY, "trainer.progress=false", f"trainer.run_dir={tmp_path / 'quiet'}"]) == 0
    assert "metacontrast:" not in capsys.readouterr().err


def test_auto_precision_on_a_cpu_without_native_bf16_is_fp32_and_says_why(monkeypatch):
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    dtype = resolve_precision("auto", torch.device("cpu"))
    assert dtype is None
    assert precision_reason("auto", torch.device("cpu"), dtype) == (
        "fp32 (auto: this CPU has no native bf16, where bf16 is slower than fp32; set trainer.precision to choose)")
    assert precision_reason("bf16", torch.device("cpu"), torch.bfloat16) == "bf16 (trainer.precision=bf16)"


def test_the_summary_is_a_table_of_percentages_with_protocols():
    results = {"run_dir": "runs/x", "method": "simclr", "dataset": "digits", "encoder": "conv4", "steps": 10,
               "epochs": 1, "global_batch": 64, "precision": "fp32", "device": "cpu", "hardware": "h",
               "world_size": 1, "wall_clock_s": 12.4, "train_loop_s": 8.0,
               "protocols": {"knn": {"name": "knn", "k": 20, "temperature": 0.1}},
               "metrics": {"pretrained": {"knn_top1": 0.98765, "knn_top5": 1.0}, "raw_pixels": {"knn_top1": 0.5}}}
    lines = summary_lines(results)
    assert lines[:4] == ["run        runs/x",
                         "trained    simclr on digits, encoder conv4, 10 steps (1 epochs), global batch 64",
                         "           fp32 on cpu (h, 1 process(es))", "time       12 s (training loop 8 s)"]
    table = lines[5:9]
    assert table[0].split() == ["metric", "protocol", "pretrained", "raw_pixels"]
    assert table[2].split() == ["knn_top1", "knn", "(k=20,", "temperature=0.1)", "98.8%", "50.0%"]
    assert table[3].split() == ["knn_top5", "knn", "(k=20,", "temperature=0.1)", "100.0%", "-"]
    assert "report     metacontrast report runs/x" in "\n".join(lines)


def test_plugins_lists_the_options_a_user_types(capsys):
    assert main(["plugins"]) == 0
    out = capsys.readouterr().out
    options = out.split("config options", 1)[1]
    encoder = options.split("    encoder:", 1)[1].split("    episode:", 1)[0]  # wrapped lines included
    assert "resnet18_cifar" in encoder and "timm" in encoder  # timm's option comes from its plugin
    assert "experiment:" in options and "table6/simclr_baseline" in options


def _trustworthiness_by_hand(x: np.ndarray, low: np.ndarray, k: int) -> float:
    """Venna & Kaski's trustworthiness written out: penalise points that are neighbours in
    the map but not in the original space, by their original rank."""
    n = x.shape[0]
    dx = ((x[:, None] - x[None]) ** 2).sum(-1)
    dl = ((low[:, None] - low[None]) ** 2).sum(-1)
    penalty = 0.0
    for i in range(n):
        order = [j for j in np.argsort(dx[i], kind="stable") if j != i]
        rank = {j: r + 1 for r, j in enumerate(order)}
        near_map = [j for j in np.argsort(dl[i], kind="stable") if j != i][:k]
        penalty += sum(rank[j] - k for j in near_map if rank[j] > k)
    return 1 - 2.0 / (n * k * (2 * n - 3 * k - 1)) * penalty


def test_the_projection_keeps_neighbourhoods_that_pca_loses():
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(6, 40, generator=g) * 4
    y = torch.arange(6).repeat_interleave(30)
    x = centres[y] + torch.randn(180, 40, generator=g)
    tsne = project_2d(x, y, max_points=1000, seed=0, method="tsne")
    pca = project_2d(x, y, max_points=1000, seed=0, method="pca")
    assert tsne["method"] == "tsne" and tsne["points"].shape == (180, 2) and torch.equal(tsne["labels"], y)
    again = project_2d(x, y, max_points=1000, seed=0)  # the default, and reproducible
    assert torch.equal(again["points"], tsne["points"])
    t_tsne = _trustworthiness_by_hand(x.numpy(), tsne["points"].numpy(), k=10)
    t_pca = _trustworthiness_by_hand(x.numpy(), pca["points"].numpy(), k=10)
    assert t_tsne > 0.95 and t_tsne > t_pca


def test_a_tables_run_is_named_after_the_table():
    assert data_label(compose_config(["data=tabular/wine"])) == "wine"
    assert data_label(compose_config(["data=tabular/csv", "data.root=/x/loans.csv", "data.table.label=y"])) == "loans"
    assert data_label(compose_config([])) == "digits"


def test_top5_is_reported_only_where_it_can_miss():
    g = torch.Generator().manual_seed(0)
    for classes in (2, 5, 10):
        scores, y = torch.randn(50, classes, generator=g), torch.randint(0, classes, (50,), generator=g)
        got = topk_accuracies(scores, y, "knn")
        ranked = [sorted(range(classes), key=lambda c, r=r: -float(scores[r, c])) for r in range(50)]
        expected = {"knn_top1": sum(ranked[r][0] == int(y[r]) for r in range(50)) / 50}
        if classes > 5:
            expected["knn_top5"] = sum(int(y[r]) in ranked[r][:5] for r in range(50)) / 50
        assert set(got) == set(expected) and all(abs(got[k] - v) < 1e-6 for k, v in expected.items())


def test_a_value_hydra_cannot_read_unquoted_is_refused_with_the_quoting_that_works(tmp_path, capsys):
    import re
    import shlex

    for name in ("café", "my run (1)", "it's"):
        value = str(tmp_path / name)
        assert main(["config", f"trainer.run_dir={value}"]) == 2
        err = capsys.readouterr().err
        assert err.startswith("metacontrast: error: trainer.run_dir: hydra cannot read the value") and err[-1] == "\n"
        suggestion = re.search(r"inside the shell's quotes: (.*)$", err.strip()).group(1)
        (override,) = shlex.split(suggestion)  # as the shell hands it over
        assert compose_config([override]).trainer.run_dir == value
    run_dir = tmp_path / "café"
    assert main(["train", *TINY, "evaluation.baselines=[]", f"trainer.run_dir='{run_dir}'"]) == 0
    assert (run_dir / "results.json").is_file()
