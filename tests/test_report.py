"""``metacontrast report`` and ``metacontrast multirun``: real runs in, Markdown and real
PNG images out; seeds of one configuration summarised as mean +- std."""

from __future__ import annotations

import json
import statistics

import numpy as np
import pytest
import yaml
from PIL import Image

from metacontrast.cli import main
from metacontrast.config import ConfigError
from metacontrast.multirun import expand_sweep, job_name
from metacontrast.report import find_runs, format_value, group_runs
from metacontrast.report_plots import CURVES_SIZE, PROJECTION_SIZE

from .conftest import TINY


def _png(path, size):
    image = Image.open(path)
    image.load()
    assert image.format == "PNG" and image.size == size
    pixels = np.asarray(image.convert("L"), dtype=np.float64)
    assert pixels.std() > 5  # something is drawn, not a blank canvas


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("report") / "run"
    code = main(["train", *[o for o in TINY if not o.startswith(("trainer.max_steps", "trainer.epochs"))],
                 "trainer.epochs=2", "trainer.max_steps=0", "trainer.eval_every_epochs=1", "trainer.log_every=2",
                 "data.train_subset=160", f"trainer.run_dir={run_dir}"])
    assert code == 0
    return run_dir


def test_main_job_then_report_writes_markdown_and_real_pngs(finished_run, capsys):
    assert main(["report", str(finished_run)]) == 0
    out = finished_run / "report"
    assert capsys.readouterr().out.strip() == str(out / "report.md")
    text = (out / "report.md").read_text()
    assert "| run | seeds | method |" in text and "knn_top1 [knn, last]" in text and "knn_top1 [best]" in text
    assert "kNN (weighted, k=5" in text and "linear probe" in text  # protocols stated
    results = json.loads((finished_run / "results.json").read_text())
    assert f"{100 * results['metrics']['pretrained']['knn_top1']:.1f}" in text
    _png(out / "training_curves.png", CURVES_SIZE)
    _png(out / "evaluations.png", CURVES_SIZE)
    projections = sorted(out.glob("projection_*.png"))
    assert len(projections) == 1
    _png(projections[0], PROJECTION_SIZE)
    for name in ("training_curves.png", "evaluations.png", projections[0].name):
        assert f"]({name})" in text


def test_best_epoch_is_the_best_of_the_periodic_and_final_evaluations(finished_run):
    results = json.loads((finished_run / "results.json").read_text())
    rows = [json.loads(line) for line in (finished_run / "metrics.jsonl").read_text().splitlines()]
    periodic = [(r["epoch"], r["eval/knn_top1"]) for r in rows if "eval/knn_top1" in r]
    assert [e for e, _ in periodic] == [1, 2]
    candidates = [*periodic, (results["epochs"], results["metrics"]["pretrained"]["knn_top1"])]
    best_value = max(v for _, v in candidates)
    best = results["best_metrics"]["knn_top1"]
    assert best["value"] == pytest.approx(best_value)
    assert best["epoch"] == min(e for e, v in candidates if v == best_value)
    assert "linear_top1" in results["best_metrics"]  # linear (L-BFGS) is periodic by default
    assert results["hardware"] and results["seed"] == 0 and results["torch"]


def _fake_run(root, name, seed, method="simclr", knn=0.5, wall=10.0):
    run = root / name
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(yaml.safe_dump({"method_name": method, "trainer": {"seed": seed,
                                                     "run_dir": str(run)}, "encoder": {"name": "conv4"}}))
    (run / "results.json").write_text(json.dumps({
        "method": method, "encoder": "conv4", "dataset": "digits", "steps": 10, "epochs": 1, "global_batch": 16,
        "seed": seed, "precision": "fp32", "hardware": "cpu", "wall_clock_s": wall,
        "protocols": {"knn": {"k": 5, "temperature": 0.1}},
        "metrics": {"pretrained": {"knn_top1": knn}}}))
    return run


def test_seeds_of_one_config_are_one_row_with_mean_and_std(tmp_path):
    values = [0.61, 0.64, 0.70]
    for seed, v in enumerate(values):
        _fake_run(tmp_path / "sweep", f"{seed:03d}_seed", seed, knn=v)
    _fake_run(tmp_path / "sweep", "100_byol", 0, method="byol", knn=0.4)
    groups = group_runs(find_runs([tmp_path / "sweep"]))
    assert sorted(len(g) for g in groups) == [1, 3]
    assert main(["report", str(tmp_path / "sweep"), "--out", str(tmp_path / "rep")]) == 0
    text = (tmp_path / "rep" / "report.md").read_text()
    mean, std = statistics.mean(values) * 100, statistics.stdev([v * 100 for v in values])
    assert "| 0, 1, 2 | simclr |" in text and f"{mean:.1f} ± {std:.1f}" in text
    assert "| 0 | byol |" in text and "| 40.0 |" in text
    assert format_value([0.5], True) == "50.0"


def test_report_errors_name_the_path(tmp_path, capsys):
    assert main(["report", str(tmp_path / "missing")]) == 2
    assert "missing: no such directory" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["report", str(tmp_path / "empty")]) == 2
    assert "no results.json" in capsys.readouterr().err
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "results.json").write_text("{not json")
    assert main(["report", str(bad)]) == 2
    assert "results.json: unreadable" in capsys.readouterr().err


def test_sweep_expansion_follows_hydra_syntax():
    jobs = expand_sweep(["method=simclr,byol", "trainer.seed=range(0,2)", "+task_aug=rotation", "loss=[a,b]"])
    assert jobs == [["method=simclr", "trainer.seed=0", "+task_aug=rotation", "loss=[a,b]"],
                    ["method=simclr", "trainer.seed=1", "+task_aug=rotation", "loss=[a,b]"],
                    ["method=byol", "trainer.seed=0", "+task_aug=rotation", "loss=[a,b]"],
                    ["method=byol", "trainer.seed=1", "+task_aug=rotation", "loss=[a,b]"]]
    assert job_name(3, jobs[3], {"method", "trainer.seed"}) == "003_method-byol_trainer.seed-1"
    with pytest.raises(ConfigError, match="x: this sweep cannot be expanded"):
        expand_sweep(["x=glob(*)"])


def test_multirun_over_seeds_then_one_report_row(tmp_path, capsys):
    sweep = tmp_path / "sweep"
    args = [*TINY, "trainer.progress=false", "evaluation.baselines=[]", "trainer.seed=0,1"]
    assert main(["multirun", "--dir", str(sweep), *args]) == 0
    record = yaml.safe_load((sweep / "multirun.yaml").read_text())
    assert [j["status"] for j in record["jobs"]] == ["done", "done"]
    assert [j["overrides"][-1] for j in record["jobs"]] == ["trainer.seed=0", "trainer.seed=1"]
    assert main(["train", "-m", "--dir", str(sweep), *args]) == 0  # again: finished jobs are skipped
    assert [j["status"] for j in yaml.safe_load((sweep / "multirun.yaml").read_text())["jobs"]] == \
        ["done (earlier)"] * 2
    capsys.readouterr()
    assert main(["report", str(sweep)]) == 0
    text = (sweep / "report" / "report.md").read_text()
    assert "| 0, 1 | simclr |" in text and " ± " in text
    capsys.readouterr()
    assert main(["multirun", *args, "trainer.run_dir=x"]) == 2
    assert "trainer.run_dir: a multirun sets each job's run directory" in capsys.readouterr().err


def test_unknown_periodic_evaluator_fails_before_training(tmp_path, capsys):
    code = main(["train", *TINY, "evaluation.periodic=[knn,fewshot]", f"trainer.run_dir={tmp_path / 'run'}"])
    assert code == 2
    assert "evaluation.periodic: fewshot not among the configured evaluators (knn, linear)" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
