"""Every config composes and runs two CPU steps; bad config input fails naming the key."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from metacontrast.builder import component_config
from metacontrast.builtin.encoders import Conv4
from metacontrast.cli import main
from metacontrast.config import ConfigError, compose_config, config_dir
from metacontrast.data import DatasetError
from metacontrast.trainer import fit

from .conftest import TEST_DEVICE, TINY

NEEDS_FILES = {"cifar100", "stl10", "mnist", "fashionmnist"}  # torchvision layouts, real files only


def _options() -> list[tuple[str, str]]:
    root = config_dir()
    return sorted((d.name, str(f.relative_to(d).with_suffix(""))) for d in root.iterdir() if d.is_dir()
                  for f in d.rglob("*.yaml"))


# groups outside the primary defaults list are added with '+'
ADDED_GROUPS = {"task_aug", "aux", "mix", "recipe"}
# recipes for GPUs (CUDA graphs, all of CIFAR-10 as the kNN bank): two CPU steps of each, eagerly
GPU_EXPERIMENTS = ("speedrun/", "cifar10_200ep/")
ON_THE_CPU = ["trainer.cuda_graphs=false", "trainer.compile=off", "trainer.batch_size=16",
              "evaluation.train_subset=200", "evaluation.batch_size=64"]
SMALL_STRONG = ["encoder.pool=avg", "views.weak.size=32", "views.strong_sizes=[16]"]
SMALL_ALEXNET = ["encoder.width=0.125", "memory.read_size=64"]
RGB_OPTIONS = {("encoder", "split_alexnet"), ("encoder", "channel_split"), ("head", "split_projection"),
               ("loss", "oucl"), ("loss", "metaug"), ("views", "cmc"), ("method", "metaug"),
               ("method", "metaug_only_oucl"), ("recipe", "gpu_cifar10"), ("memory", "memory_bank")}
# what an option needs from the rest of the config to run
NEEDS = {
    ("solver", "protonet"): ["episode=n_way_k_shot", "loss=[query_ce]"],
    ("solver", "ridge"): ["episode=n_way_k_shot", "loss=[query_ce]"],
    ("solver", "svm"): ["episode=n_way_k_shot", "loss=[query_ce]"],
    ("solver", "all_pairs"): ["loss=[query_ce]"],
    ("loss", "query_ce"): ["solver=protonet", "episode=n_way_k_shot"],
    ("loss", "byol"): ["method=byol"],
    ("loss", "moco_infonce"): ["method=moco_v2"],
    # a memory needs a loss that reads it (otherwise it is refused: test_option_walk.py)
    ("memory", "queue"): ["method=moco_v2", "head.hidden_dim=32", "head.out_dim=16", "memory.size=64"],
    ("memory", "memory_bank"): ["method=metaug", "encoder=split_alexnet", "views=cmc", *SMALL_ALEXNET],
    # CLSA's views come in several sizes: Conv-4 pools globally; ImageNet sizes shrunk for the
    # CPU. The digits experiment of TINY sets views, so methods name theirs again.
    ("loss", "ddm"): ["method=clsa_single", "views=clsa_single_cifar", *SMALL_STRONG],
    **{("views", v): ["method=clsa_single", *SMALL_STRONG]
       for v in ("clsa_single", "clsa_multi", "clsa_single_cifar", "clsa_multi_cifar")},
    **{("method", m): ["views=clsa_single_cifar", *SMALL_STRONG]
       for m in ("clsa_single", "clsa_multi", "clsa_single_contrastive", "moco_v2_strong_query")},
    ("method", "moco_v2_strong_query_key"): ["views=clsa_single_cifar", *SMALL_STRONG, "views.strong_sizes=[16,16]"],
    ("mix", "unmix"): ["solver=all_pairs", "loss=[query_ce]"],  # soft targets: not nt_xent
    ("recipe", "gpu_cifar10"): ON_THE_CPU,
    ("eval", "few_shot"): ["eval.few_shot.episodes=20", "eval.few_shot.queries=3"],
    ("eval", "linear_sgd"): ["eval.linear_sgd.epochs=2"],
    ("eval", "linear_aug"): ["eval.linear_aug.epochs=2"],
    ("eval", "semi_supervised"): ["eval.semi_supervised.epochs=[1]", "eval.semi_supervised.max_steps=2"],
    # MetAug's channel views need RGB images: the synthetic CIFAR-10 (see RGB_OPTIONS)
    ("encoder", "split_alexnet"): ["head=split_projection", "loss=[oucl]", "views=cmc", "encoder.width=0.125"],
    ("encoder", "channel_split"): ["head=split_projection", "loss=[oucl]", "views=cmc", "+encoder.encoder.hidden=8",
                                   "+encoder.encoder.pool=avg"],
    ("head", "split_projection"): ["encoder=split_alexnet", "encoder.width=0.125", "loss=[oucl]", "views=cmc"],
    **{("loss", loss): ["method=metaug", "encoder=split_alexnet", "views=cmc", *SMALL_ALEXNET]
       for loss in ("oucl", "metaug")},
    ("views", "cmc"): ["method=metaug", "encoder=split_alexnet", *SMALL_ALEXNET],
    **{("method", m): ["encoder=split_alexnet", "views=cmc", *SMALL_ALEXNET] for m in ("metaug", "metaug_only_oucl")},
}


def _synthetic_npz(path: Path, n_train=64, n_test=32, size=32) -> Path:
    g = np.random.default_rng(0)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, x_train=g.integers(0, 256, (n_train, size, size, 3), dtype=np.uint8),
             y_train=g.integers(0, 10, n_train), x_test=g.integers(0, 256, (n_test, size, size, 3),
                                                                    dtype=np.uint8),
             y_test=g.integers(0, 10, n_test))
    return path


def _imagefolder(root: Path) -> Path:
    from PIL import Image

    g = np.random.default_rng(1)
    for split, n in (("train", 20), ("test", 4)):
        for cls in ("a", "b"):
            (root / split / cls).mkdir(parents=True)
            for i in range(n):
                Image.fromarray(g.integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(root / split / cls / f"{i}.png")
    return root


# options that read table rows run on the bundled wine table instead of the digits
TABLE_OPTIONS = {("views", "tabular"), ("encoder", "tabular_mlp"), ("encoder", "tabular_transformer"),
                 ("eval", "few_labels")}
TABLE_TINY = ["data=tabular/wine", "trainer=debug", f"trainer.device={TEST_DEVICE}", "trainer.resume=never",
              "trainer.batch_size=16", "eval.knn.k=5", "eval.linear.max_iter=5", "eval.few_labels.steps=2",
              "eval.few_labels.splits=2", "eval.few_labels.labelled=10"]


def _table_file(option: str, tmp_path: Path) -> list[str]:
    """A small mixed-type table for data=tabular/csv|parquet (text, missing values)."""
    import pandas as pd

    g = np.random.default_rng(3)
    frame = pd.DataFrame({"x": g.normal(size=60), "kind": g.choice(["a", "b", None], 60),
                          "y": g.choice(["yes", "no"], 60)})
    path = tmp_path / f"table.{option}"
    frame.to_csv(path, index=False) if option == "csv" else frame.to_parquet(path)
    return [f"data.root={path}", "data.table.label=y"]


def _table_base(group: str, option: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    base = list(TABLE_TINY)
    if group == "eval":
        base = [o for o in base if not o.startswith("eval.") or o.startswith(f"eval.{option}.")]
    if group == "data":
        base = base[1:]
        kind = option.split("/", 1)[1]
        if kind in ("csv", "parquet"):
            base += _table_file(kind, tmp_path)
        if kind == "openml":  # no network here: OpenML answers with a bundled table
            import sklearn.datasets

            wine = sklearn.datasets.load_wine(as_frame=True)
            monkeypatch.setattr(sklearn.datasets, "fetch_openml", lambda **kw: sklearn.utils.Bunch(
                frame=wine.frame, target_names=["target"], details={"name": "wine"}))
    return base


def _data_overrides(option: str, tmp_path: Path) -> list[str]:
    if option == "cifar10":
        _synthetic_npz(tmp_path / "data" / "cifar10" / "cifar10.npz")
        return [f"data.root={tmp_path / 'data'}"]
    if option == "npz":
        return [f"data.root={_synthetic_npz(tmp_path / 'x.npz')}"]
    if option == "omniglot":  # 6 alphabets of 6 characters, 3 held out for testing
        from PIL import Image

        g = np.random.default_rng(2)
        for a in range(6):
            for ch in range(6):
                folder = tmp_path / "omni" / "omniglot" / f"alpha{a}__character{ch:02d}"
                folder.mkdir(parents=True)
                for i in range(4):
                    Image.fromarray(g.integers(0, 256, (30, 30), dtype=np.uint8)).save(folder / f"{i}.png")
        return [f"data.root={tmp_path / 'omni'}"]
    if option == "imagefolder":
        return [f"data.root={_imagefolder(tmp_path / 'folder')}", "data.image_size=16"]
    if option in ("webdataset", "hf"):
        return _encoded(option, tmp_path)
    return []


def _encoded(option: str, tmp_path: Path) -> list[str]:
    """The image folder's images as one train and one test tar shard, or as a saved
    Hugging Face DatasetDict."""
    import io

    from PIL import Image

    folder = _imagefolder(tmp_path / "folder")
    splits = {split: [(p, label) for label, cls in enumerate(("a", "b"))
                      for p in sorted((folder / split / cls).glob("*.png"))] for split in ("train", "test")}
    if option == "webdataset":
        import webdataset as wds

        for split, rows in splits.items():
            with wds.TarWriter(str(tmp_path / f"{split}-000000.tar")) as sink:
                for i, (path, label) in enumerate(rows):
                    sink.write({"__key__": f"{i:05d}", "png": path.read_bytes(), "cls": label})
        return [f"data.root={tmp_path}", "data.image_size=16", "data.workers=1"]
    import datasets

    saved = datasets.DatasetDict({split: datasets.Dataset.from_dict(
        {"image": [Image.open(io.BytesIO(p.read_bytes())) for p, _ in rows], "label": [y for _, y in rows]},
        features=datasets.Features({"image": datasets.Image(), "label": datasets.Value("int64")}))
        for split, rows in splits.items()})
    saved.save_to_disk(str(tmp_path / "saved"))
    return [f"data.root={tmp_path / 'saved'}", "data.image_size=16", "data.workers=1"]


@pytest.mark.parametrize(("group", "option"), _options(), ids=lambda x: str(x))
def test_config_composes_and_runs_two_steps(group, option, tmp_path, monkeypatch):
    if group == "data" and option in NEEDS_FILES:
        cfg = compose_config([*TINY, f"data={option}", f"trainer.run_dir={tmp_path}"])
        with pytest.raises(DatasetError, match="data.root"):
            fit(cfg)
        return
    extra = [f"{group}={option}" if group not in ("loss", "eval") else f"{group}=[{option}]"]
    if group == "logger":  # beside metrics.jsonl, which the test reads
        extra = [f"logger=[{','.join(dict.fromkeys(['jsonl', option]))}]"]
    if group in ADDED_GROUPS:
        extra = [f"+{group}={option}"]
    extra += NEEDS.get((group, option), [])
    if group == "teacher":  # a method with a teacher, its teacher swapped
        extra = ["method=moco_v2", f"teacher={option}"]
    table = (group, option) in TABLE_OPTIONS or (group == "data" and option.startswith("tabular/"))
    if group == "data" and not table:
        extra += _data_overrides(option, tmp_path)
    if (group, option) == ("eval", "transfer"):  # a synthetic RGB target for the grey digits
        target = _synthetic_npz(tmp_path / "target.npz")
        extra += ["eval.transfer.data.name=npz", f"eval.transfer.data.root={target}",
                  "eval.transfer.weight_decays=[0.001]", "eval.transfer.max_iter=5"]
    if (group, option) in RGB_OPTIONS:
        extra += ["data=cifar10", *_data_overrides("cifar10", tmp_path)]
    if group == "experiment" and option.startswith("metaug_cifar10"):
        extra += [*_data_overrides("cifar10", tmp_path), "encoder.width=0.125", "trainer.batch_size=16"]
        extra += [] if option.endswith("simclr") else ["memory.read_size=64"]
    gpu_recipe = group == "experiment" and (option.endswith("_fast") or option.startswith(GPU_EXPERIMENTS))
    if group == "experiment" and (option.startswith(("cifar10", "table6", "clsa_table4")) or gpu_recipe):
        extra += _data_overrides("cifar10", tmp_path)
    if gpu_recipe:  # no graphs on the CPU
        extra += ON_THE_CPU
    if group == "experiment" and option.startswith("imagenet"):  # ResNet-50 recipes: tiny images here
        sizes = ["views.size=32"] if option == "imagenet_moco_v2" else ["views.weak.size=32", "views.strong_sizes=[16]"]
        # fp32: ResNet-50 leaves 16-pixel views 1x1 in layer4, normalised over 4 images; in bf16
        # their gradient overflows for some draws (the recipe itself runs 224-pixel views)
        extra += [*_data_overrides("imagefolder", tmp_path), "data.workers=1", "trainer.batch_size=4", *sizes,
                  "trainer.precision=fp32"]
    if group == "experiment" and option.startswith("omniglot"):
        extra += [*_data_overrides("omniglot", tmp_path), "eval.few_shot.episodes=10", "eval.few_shot.queries=1",
                  "eval.few_shot.shots=[1]", "eval.few_shot.ways=3"]
    if group == "encoder" and option.startswith("resnet50"):
        extra += ["trainer.batch_size=4"]
    if group == "episode" and option == "n_way_k_shot":
        extra += ["views.n_views=2"]
    own_eval = gpu_recipe or (group, option) == ("recipe", "gpu_cifar10") or (group == "experiment" and option.startswith(
        ("omniglot", "clsa_table4", "imagenet", "metaug")))  # own evaluators
    base = [o for o in TINY if not (o.startswith("eval.") and (own_eval or (
        group == "eval" and not o.startswith(f"eval.{option}."))))]
    if table:
        base = _table_base(group, option, tmp_path, monkeypatch)
    run_dir = tmp_path / "run"
    cfg = compose_config([*base, *extra, f"trainer.run_dir={run_dir}", "trainer.max_steps=2",
                          "trainer.epochs=1"])
    for node in (cfg.eval or {}).values():  # the recipes' k = 200 over the few synthetic images
        if node is not None and "k" in node:
            node.k = min(int(node.k), 5)
    if group == "trainer":  # the trainer group decides device and length: keep the test short
        cfg.trainer.max_steps, cfg.trainer.batch_size, cfg.trainer.device = 2, 8, TEST_DEVICE
        cfg.trainer.progress = False
    results = fit(cfg)
    assert results["steps"] == 2
    rows = [json.loads(r) for r in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["step"] == 2 and np.isfinite(rows[-1]["loss"])
    assert (run_dir / "results.json").is_file() and (run_dir / "config.yaml").is_file()


def test_misspelt_key_fails_at_composition_naming_the_full_key():
    with pytest.raises(ConfigError, match=r"trainer\.epcohs"):
        compose_config(["trainer.epcohs=3"])
    with pytest.raises(ConfigError, match=r"encoder\.hiden"):
        compose_config(["encoder.hiden=3"])


def test_wrong_type_fails_naming_the_key():
    with pytest.raises(ConfigError, match=r"trainer\.epochs"):
        compose_config(["trainer.epochs=many"])


def test_unknown_group_option_lists_available():
    with pytest.raises(ConfigError, match="method=simclrr: no such option; the options of method are: .*simclr"):
        compose_config(["method=simclrr"])


def test_component_params_checked_against_component_config():
    with pytest.raises(ConfigError, match=r"encoder\.hiden: unknown key for 'conv4'; valid keys: hidden, pool"):
        component_config(Conv4, "encoder", {"hiden": 3})
    with pytest.raises(ConfigError, match=r"encoder\.hidden"):
        component_config(Conv4, "encoder", {"hidden": "wide"})
    with pytest.raises(ConfigError, match=r"encoder: encoder\.pool must be"):
        component_config(Conv4, "encoder", {"pool": "max"})


@pytest.mark.parametrize(("args", "expected"), [
    (["method=nope"], "method=nope: no such option"),
    (["trainer.batch_sise=3"], "trainer.batch_sise"),
    (["encoder.name=vit"], "unknown encoder 'vit'; available: channel_split, conv4, resnet18, resnet50"),
    (["data=cifar10", "data.root=/does/not/exist"], "data.root: /does/not/exist does not exist"),
    (["optim.name=adagrad"], "optim.name: must be one of lars, sgd, adam, adamw, got 'adagrad'"),
    (["trainer.precision=fp8"], "trainer.precision: must be one of auto, bf16, fp16, fp32, got 'fp8'"),
])
def test_cli_bad_input_is_one_line_and_writes_nothing(args, expected, tmp_path, capsys):
    run_dir = tmp_path / "run"
    code = main(["train", *TINY, *args, f"trainer.run_dir={run_dir}"])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.startswith("metacontrast: error:") and "\n" not in err
    assert expected in err
    assert not run_dir.exists()


METHODS = ["simclr", "protonet", "r2d2", "svm", "byol"]
VARIANTS = {"baseline": [], "ta": ["+task_aug=rotation"], "llr": ["+aux=rotation_loss"], "mix": ["+mix=unmix"],
            "mix_llr": ["+mix=unmix", "+aux=rotation_loss"]}


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("method", METHODS)
def test_every_method_composes_with_every_augmentation(method, variant, tmp_path):
    run_dir = tmp_path / "run"
    simclr_with_soft_targets = ["solver=all_pairs", "loss=[query_ce]"] if method == "simclr" and "mix" in variant else []
    cfg = compose_config([*TINY, f"method={method}", *VARIANTS[variant], *simclr_with_soft_targets,
                          f"trainer.run_dir={run_dir}",
                          "evaluation.baselines=[]", "head.hidden_dim=32", "head.out_dim=16"])
    results = fit(cfg)
    assert results["steps"] == 2
    rows = [json.loads(r) for r in (run_dir / "metrics.jsonl").read_text().splitlines()]
    names = {k for k in rows[-1] if k.startswith("loss/")}
    want = {"loss/byol"} if method == "byol" else {"loss/query_ce"}
    if method == "simclr" and not simclr_with_soft_targets:
        want = {"loss/nt_xent"}
    if "llr" in variant:
        want.add("loss/rotation")
    assert names == want and all(np.isfinite(rows[-1][n]) for n in names)
