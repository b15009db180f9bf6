"""The GPU queue (benchmarks/gpu_queue.py) and the session that spends a GPU on it
(benchmarks/gpu_session.sh --next): which entries a call runs, what a capped, resumed or
failed run leaves in the queue, and the whole path on the CPU (--dry-run --next) on
scratch copies of the queue and the docs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from .conftest import PREPARED, REPO

sys.path.insert(0, str(REPO / "benchmarks"))
import gpu_queue


def _entry(id_, minutes, kind="train", status="pending", record="speedrun", **extra):
    base = {"id": id_, "title": id_, "kind": kind, "record": record, "minutes": minutes, "status": status,
            "runs": []}
    base.update({"experiment": "speedrun/simclr_knn85"} if kind == "train" else {"command": "true"})
    return {**base, **extra}


def test_a_call_runs_the_first_entries_that_fit_in_queue_order():
    entries = [_entry("done", 1, status="done"), _entry("a", 3), _entry("big", 7), _entry("b", 2),
               _entry("cmd", 1, kind="command"), _entry("c", 4)]
    # 520 s: a (3 min + 10% + start-up: 243 s), then big (507 s) does not fit in what is left
    # but b (177 s) and the command (81 s) do; c no longer does
    assert gpu_queue.plan(entries, 520) == ["a", "b", "cmd"]
    # a run no call can hold (11 minutes) at the head of the queue is capped at what is left
    # when that is worth it; further down it waits for the entries before it
    long = [_entry("long", 11), _entry("small", 1)]
    assert gpu_queue.plan(long, 500) == ["long"]
    assert gpu_queue.plan(long, 200) == ["small"]  # too little left to start it
    assert gpu_queue.plan([_entry("first", 6), *long], 300) == ["small"]
    # a partial entry needs only what is left of it
    half = _entry("half", 8, status="partial", partial={"run_dir": "/x", "fraction": 0.5})
    assert gpu_queue.plan([half], 330) == ["half"]
    assert gpu_queue.plan([_entry("a", 3)], 60) == []


def test_command_entries_are_requeued_when_their_watched_code_changed():
    entries = [_entry("t", 2, kind="command", status="done", watch=["core/x.py"], measured_commit="abc"),
               _entry("u", 2, kind="command", status="done", watch=["plugins/y"], measured_commit="abc"),
               _entry("v", 2, kind="command", status="done")]
    ids = gpu_queue.stale(entries, lambda since, paths: paths == ["core/x.py"])
    assert ids == ["t"] and [e["status"] for e in entries] == ["pending", "done", "done"]


FAKE_TRAINER = '''\
#!{python}
"""Stands in for `python -m metacontrast.cli train ...`: the first call of an attempt trains
3 of its 10 epochs and is stopped (143, a checkpoint), the second finishes it; an
experiment named 'broken' fails."""
import json, sys
from pathlib import Path
args = sys.argv[3:]
if any(a == "experiment=broken" for a in args):
    print("config error: experiment=broken is broken", file=sys.stderr)
    sys.exit(2)
run = Path(next(a.split("=", 1)[1] for a in args if a.startswith("trainer.run_dir=")))
rows = lambda epochs: "".join(json.dumps({{"step": 97 * e, "epoch": e, "wall_clock_s": 20.0 * e,
                                          "eval/knn_top1": 0.5 + e / 100, "eval/knn_majority_top1": 0.49 + e / 100}}) + "\\n"
                             for e in epochs)
if not (run / "checkpoints").is_dir():
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.yaml").write_text("trainer:\\n  epochs: 10\\n")
    (run / "metrics.jsonl").write_text(rows(range(1, 4)))
    sys.exit(143)
with (run / "metrics.jsonl").open("a") as f:
    f.write(rows(range(4, 11)))
final = {{"knn_top1": 0.61, "knn_majority_top1": 0.6, "linear_top1": 0.65}}
(run / "results.json").write_text(json.dumps({{
    "metrics": {{"pretrained": final}}, "train_loop_s": 200.0, "epochs": 10, "hardware": "a fake GPU",
    "schedule": {{"completed": True, "ended_by": "schedule", "steps": 970, "planned_steps": 970,
                 "planned_epochs": 10.0, "fraction": 1.0}},
    "best_metrics": {{"knn_top1": {{"value": 0.61, "epoch": 10, "step": 970}}}},
    "time_to_target": {{"metric": "knn_majority_top1", "target": 0.85, "reached": False}}}}))
'''


def test_a_capped_run_resumes_in_the_next_call_and_a_failed_one_keeps_its_error(tmp_path):
    fake = tmp_path / "fake-python"
    fake.write_text(FAKE_TRAINER.format(python=sys.executable))
    fake.chmod(0o755)
    entries = [_entry("attempt", 11), _entry("broken", 2, experiment="broken")]
    docs = tmp_path / "docs"
    kwargs = {"workdir": tmp_path / "runs", "data_root": "data", "dry": False, "log": tmp_path / "queue.log",
              "env": dict(os.environ), "python": str(fake), "docs": docs}
    gpu_queue.run_entry(entries[0], 30, **kwargs)  # the first call: capped at epoch 3
    attempt = entries[0]
    assert attempt["status"] == "partial" and attempt["partial"]["fraction"] == 0.3
    assert attempt["runs"][0]["status"] == "capped at epoch 3, resumable" and attempt["runs"][0]["exit"] == 143
    gpu_queue.run_entry(attempt, 30, **kwargs)  # the second call resumes the same directory
    assert attempt["status"] == "done" and "partial" not in attempt and len(attempt["runs"]) == 1
    run = attempt["runs"][0]
    assert (run["status"], run["device"], run["minutes"], run["epochs"]) == ("done", "a fake GPU", 3.33, 10)
    assert (run["knn_top1"], run["knn_majority_top1"], run["linear_top1"]) == (61.0, 60.0, 65.0)
    assert run["schedule"] == "complete (10 epochs)" and run["curve"][0] == [1, 0.33, 51.0, 50.0]
    assert run["target"] == "knn_majority_top1 >= 85.0%: not reached"
    assert (docs / run["plot"]).is_file()  # the curve, next to the docs
    assert "trainer.run_dir" not in run["command"] and run["command"].startswith(
        "metacontrast train experiment=speedrun/simclr_knn85 data.root=data")
    assert attempt["minutes"] == 4.1  # the next estimate: what it took, with its start-up
    gpu_queue.run_entry(entries[1], 30, **kwargs)
    assert entries[1]["status"] == "failed" and "experiment=broken is broken" in entries[1]["runs"][0]["error"]
    # a partial attempt whose machine went back: recorded as cut, and the next call starts afresh
    again = _entry("again", 11)
    gpu_queue.run_entry(again, 30, **kwargs)
    gone = Path(again["partial"]["run_dir"])
    gone.rename(gone.with_name("elsewhere"))
    gpu_queue.run_entry(again, 30, **kwargs)
    assert again["runs"][0]["status"] == "cut at epoch 3: the machine went back before a resume"
    assert again["runs"][1]["status"] == "capped at epoch 3, resumable" and len(again["runs"]) == 2


def test_the_committed_queue_loads_and_the_docs_show_it(tmp_path):
    """The docs' tables are written from the queue: after an edit of the queue file,
    `benchmarks/gpu_queue.py render` brings them in line (this fails until it has run)."""
    entries = gpu_queue.load()
    assert entries[0]["id"] == "calibration_simclr_100ep"
    for name in ("speedrun.md", "experiments.md"):
        (tmp_path / name).write_text((REPO / "docs" / name).read_text())
    gpu_queue.render(entries, tmp_path)
    for name in ("speedrun.md", "experiments.md"):
        assert (tmp_path / name).read_text() == (REPO / "docs" / name).read_text(), name


@pytest.mark.parametrize(("text", "message"), [
    ("- id: a\n  kind: train\n  record: speedrun\n  minutes: 1\n  status: pending\n", "a train entry needs an experiment"),
    ("- id: a\n  kind: job\n", "kind must be one of train, command, got 'job'"),
    ("- id: a\n  kind: command\n  command: x\n  record: speedrun\n  minutes: 0\n  status: pending\n",
     "minutes must be a positive number"),
    ("- {id: a, kind: command, command: x, record: speedrun, minutes: 1, status: pending}\n" * 2, "the id is used twice"),
])
def test_a_malformed_queue_is_named_in_one_line(tmp_path, capsys, text, message):
    queue = tmp_path / "queue.yaml"
    queue.write_text(text)
    assert gpu_queue.main(["--queue", str(queue), "list"]) == 2
    err = capsys.readouterr().err
    assert message in err and str(queue) in err and len(err.strip().splitlines()) == 1


def test_requeue_names_an_entry_that_does_not_exist(tmp_path, capsys):
    queue = tmp_path / "queue.yaml"
    queue.write_text((REPO / "benchmarks" / "gpu_queue.yaml").read_text())
    assert gpu_queue.main(["--queue", str(queue), "--docs", str(tmp_path), "requeue", "calibraton"]) == 2
    assert "no entry calibraton; entries: calibration_simclr_100ep" in capsys.readouterr().err


@pytest.mark.skipif(not (PREPARED / "cifar10" / "cifar10.npz").is_file() and not
                    (REPO.parent / "shared" / "data" / "cifar10").is_dir(), reason="needs CIFAR-10")
def test_the_dry_run_of_a_session_marks_its_entry_done_in_a_scratch_copy_of_the_queue(tmp_path):
    """`gpu_session.sh --dry-run --next`: the session's path on the CPU, the first queue
    entry shrunk; the checkout's queue and docs stay as they were."""
    before = {p: (REPO / p).read_bytes() for p in ("benchmarks/gpu_queue.yaml", "docs/speedrun.md",
                                                   "docs/experiments.md", "docs/benchmarks.md")}
    done = subprocess.run(["bash", "benchmarks/gpu_session.sh", "--dry-run", "--next", "--budget-s", "75"],
                          cwd=REPO, env=dict(os.environ, OUT=str(tmp_path)), capture_output=True, text=True,
                          timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert {p: (REPO / p).read_bytes() for p in before} == before
    entries = yaml.safe_load((tmp_path / "benchmarks" / "gpu_queue.yaml").read_text())
    first = entries[0]
    assert first["id"] == "calibration_simclr_100ep" and first["status"] == "done"
    run = first["runs"][-1]
    assert run["status"] == "done" and run["schedule"] == "complete (2 epochs)"
    assert {"knn_top1", "knn_majority_top1", "linear_top1"} <= set(run)  # both protocols and the probe
    ledger = (tmp_path / "docs" / "speedrun.md").read_text()
    assert "`calibration_simclr_100ep` ([curve](speedrun/" in ledger
    results = json.loads(next((tmp_path / "runs").glob("calibration_simclr_100ep-*/results.json")).read_text())
    assert results["protocols"]["knn_majority"]["vote"] == "majority"
    assert "== smoke: exit 0" in (tmp_path / "session.log").read_text()
