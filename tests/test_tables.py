"""Tables: column typing, missing values, the leak-free split, sources and their errors."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from metacontrast.config import compose_config
from metacontrast.data import DatasetError, from_frame, load_dataset
from metacontrast.data.tables import CATEGORICAL, NUMERICAL, stratified_split


def _frame(n: int = 40) -> pd.DataFrame:
    g = np.random.default_rng(0)
    colour = g.choice(["red", "green", "blue"], n).astype(object)
    colour[3] = None
    size = g.normal(10.0, 2.0, n)
    size[5] = np.nan
    return pd.DataFrame({"size": size, "colour": colour, "count": g.integers(0, 4, n),
                         "flag": g.random(n) < 0.5, "label": g.choice(["no", "yes"], n)})


def test_columns_are_typed_by_dtype_and_by_the_lists():
    data = from_frame(_frame(), label="label", categorical=["count"])
    kinds = {c.name: c.kind for c in data.schema.columns}
    assert kinds == {"size": NUMERICAL, "colour": CATEGORICAL, "count": CATEGORICAL, "flag": CATEGORICAL}
    assert data.schema.classes == ("no", "yes") and data.num_classes == 2
    assert data.train_rows.shape[1] == data.test_rows.shape[1] == 4


def test_numerical_columns_are_standardised_with_the_train_split_alone():
    frame = _frame()
    data = from_frame(frame, label="label", split_seed=3)
    train, _ = stratified_split(np.array([{"no": 0, "yes": 1}[v] for v in frame["label"]]), 0.3, 3)
    raw = frame["size"].to_numpy()[train]
    seen = raw[~np.isnan(raw)]
    column = data.schema.columns[0]
    assert column.mean == pytest.approx(seen.mean()) and column.std == pytest.approx(seen.std())
    expected = (raw - seen.mean()) / seen.std()
    got = data.train_rows[:, 0].double().numpy()
    assert np.allclose(got[~np.isnan(raw)], expected[~np.isnan(raw)], atol=1e-5)


def test_missing_values_are_nan_or_code_zero_and_unseen_categories_code_zero():
    frame = _frame()
    frame.loc[7, "colour"] = "purple"  # will be moved to the test split below
    data = from_frame(frame, label="label", split_seed=0)
    rows = torch.cat([data.train_rows, data.test_rows])
    assert int(torch.isnan(rows[:, 0]).sum()) == 1  # the one missing size
    colour = data.schema.columns[1]
    if "purple" in colour.categories:  # it fell in the train split: it is a category then
        assert colour.cardinality == 5
    else:
        assert colour.categories == ("blue", "green", "red")
    codes = rows[:, 1]
    assert codes.min() == 0 and codes.max() <= colour.cardinality - 1
    assert float(codes[~torch.isnan(codes)].frac().abs().sum()) == 0.0


def test_category_codes_come_from_the_train_split_only():
    frame = pd.DataFrame({"c": ["a"] * 10 + ["b"] * 10 + ["zz"], "label": [0, 1] * 10 + [1]})
    data = from_frame(frame, label="label", test_fraction=0.5, split_seed=1)
    train_values = set(frame["c"].to_numpy()[stratified_split(frame["label"].to_numpy(), 0.5, 1)[0]])
    assert set(data.schema.columns[0].categories) == train_values


def test_split_is_stratified_reproducible_and_disjoint():
    labels = np.array([0] * 30 + [1] * 10 + [2] * 3)
    train, test = stratified_split(labels, 0.3, 7)
    again = stratified_split(labels, 0.3, 7)
    assert np.array_equal(train, again[0]) and np.array_equal(test, again[1])
    assert not set(train) & set(test) and len(train) + len(test) == len(labels)
    assert [int((labels[test] == c).sum()) for c in range(3)] == [9, 3, 1]
    other = stratified_split(labels, 0.3, 8)[1]
    assert not np.array_equal(test, other)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"label": "target"}, "data.table.label: no column 'target'; the table has size, colour"),
    ({"label": ""}, "data.table.label: name the label column"),
    ({"label": "label", "categorical": ["colour", "nope"]}, "data.table.categorical: no column 'nope'"),
    ({"label": "label", "numerical": ["colour"]}, "column 'colour' holds '.*', not a number"),
    ({"label": "label", "categorical": ["size"], "numerical": ["size"]}, "'size' is also listed"),
    ({"label": "label", "drop": ["label"]}, "data.table.drop: 'label' is the label column"),
    ({"label": "label", "test_fraction": 1.5}, "data.table.test_fraction: must be in"),
])
def test_bad_table_input_names_the_key(kwargs, message):
    with pytest.raises(DatasetError, match=message):
        from_frame(_frame(), **kwargs)


def test_a_missing_label_or_a_single_class_is_refused():
    frame = _frame()
    frame.loc[2, "label"] = None
    with pytest.raises(DatasetError, match="'label' has 1 missing value"):
        from_frame(frame, label="label")
    with pytest.raises(DatasetError, match="single class"):
        from_frame(_frame().assign(label="x"), label="label")


def test_raw_features_one_hot_the_categories_and_fill_missing_numbers():
    data = from_frame(_frame(), label="label")
    x = data.raw_features(torch.cat([data.train_rows, data.test_rows]))
    cards = data.schema.cardinalities
    n_num = len(data.schema.numerical)
    assert n_num == 2 and x.shape[1] == n_num + sum(cards) and not torch.isnan(x).any()
    assert torch.equal(x[:, n_num:].sum(1), torch.full((x.shape[0],), float(len(cards))))


def _table_cfg(*overrides: str):
    return compose_config(["data=tabular/wine", *overrides]).data


def test_bundled_tables_load_without_network():
    for name, classes, width in (("wine", 3, 13), ("iris", 3, 4), ("breast_cancer", 2, 30), ("digits", 10, 64)):
        data = load_dataset(_table_cfg(f"data.table.source=sklearn:{name}"))
        assert data.num_classes == classes and data.train_rows.shape[1] == width
        assert data.num_train > data.test_rows.shape[0]


@pytest.mark.parametrize("kind", ["csv", "parquet"])
def test_csv_and_parquet_files_read_like_the_frame(kind, tmp_path):
    frame = _frame()
    path = tmp_path / f"t.{kind}"
    frame.to_csv(path, index=False) if kind == "csv" else frame.to_parquet(path)
    data = load_dataset(_table_cfg(f"data.table.source={kind}", f"data.root={path}", "data.table.label=label"))
    direct = from_frame(frame, label="label", name="t")
    assert torch.allclose(data.train_rows, direct.train_rows, equal_nan=True)
    assert data.name == "t" and torch.equal(data.test_labels, direct.test_labels)


def test_file_sources_name_what_is_wrong(tmp_path):
    with pytest.raises(DatasetError, match="data.root: data.table.source=csv reads the file"):
        load_dataset(_table_cfg("data.table.source=csv"))
    (tmp_path / "bad.parquet").write_text("not parquet")
    with pytest.raises(DatasetError, match="bad.parquet is not a readable parquet table"):
        load_dataset(_table_cfg("data.table.source=parquet", f"data.root={tmp_path / 'bad.parquet'}",
                                "data.table.label=y"))
    with pytest.raises(DatasetError, match="unknown source 'excel'"):
        load_dataset(_table_cfg("data.table.source=excel"))
    with pytest.raises(DatasetError, match="unknown bundled table 'titanic'"):
        load_dataset(_table_cfg("data.table.source=sklearn:titanic"))
    with pytest.raises(DatasetError, match="data.image_size: applies to images"):
        load_dataset(_table_cfg("data.image_size=32"))


def test_openml_reads_the_fetched_frame_and_explains_an_offline_failure(monkeypatch):
    import sklearn.datasets
    from sklearn.utils import Bunch

    frame = _frame()

    def fetched(data_id, as_frame, data_home, parser):
        assert data_id == 31 and as_frame
        return Bunch(frame=frame, target_names=["label"], details={"name": "credit"})

    monkeypatch.setattr(sklearn.datasets, "fetch_openml", fetched)
    data = load_dataset(_table_cfg("data.table.source=openml:31"))
    assert data.name == "credit" and data.schema.label == "label"

    def offline(**kwargs):
        raise OSError("network unreachable")

    monkeypatch.setattr(sklearn.datasets, "fetch_openml", offline)
    with pytest.raises(DatasetError, match="OpenML dataset 31 is neither cached"):
        load_dataset(_table_cfg("data.table.source=openml:31"))
    with pytest.raises(DatasetError, match="numeric dataset id"):
        load_dataset(_table_cfg("data.table.source=openml:adult"))


def test_rows_are_float32_and_labels_int64():
    data = load_dataset(_table_cfg())
    assert data.train_rows.dtype == torch.float32 and data.train_labels.dtype == torch.int64
    assert math.isclose(data.test_rows.shape[0] / (data.num_train + data.test_rows.shape[0]), 0.3, abs_tol=0.02)
