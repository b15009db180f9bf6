"""Tables as float rows held on the device: ``TabularData`` and its sources.

A table of F feature columns becomes ``rows (N, F)`` float32, one entry per column:

- a numerical column is standardised with the mean and std of the **train split**; a
  missing value stays NaN (the tabular encoders give it a learned embedding);
- a categorical column holds integer codes: ``k + 1`` for the k-th category of the
  **train split** (sorted), ``0`` for a missing value or a category the train split
  never had.

Nothing about the test split (categories, statistics) reaches the encoding, so the
pre-training rows and the evaluation's labelled rows never see it. Labels become
``0 .. C-1`` in the sorted order of their values.

Sources (``data.table.source``): scikit-learn's bundled tables (``sklearn:<name>``, no
network), CSV and Parquet files, OpenML datasets by id (fetched when online), and any
pandas ``DataFrame`` through ``from_frame``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import attrs
import numpy as np
import torch
from torch import Tensor

from metacontrast.data.files import DatasetError, check_split

NUMERICAL, CATEGORICAL = "numerical", "categorical"
BUNDLED = ("breast_cancer", "wine", "iris", "digits")


@attrs.frozen
class Column:
    """One feature column: ``kind`` numerical (standardised with ``mean``/``std``) or
    categorical (code ``k + 1`` is ``categories[k]``; 0 is missing or unseen)."""

    name: str
    kind: str
    categories: tuple[str, ...] = ()
    mean: float = 0.0
    std: float = 1.0

    @property
    def cardinality(self) -> int:
        """Codes a categorical column takes, the missing code 0 included."""
        return len(self.categories) + 1


@attrs.frozen
class TableSchema:
    """The feature columns in row order, the label column and its class names."""

    columns: tuple[Column, ...]
    label: str
    classes: tuple[str, ...]

    @property
    def width(self) -> int:
        """F, the entries of a row."""
        return len(self.columns)

    @property
    def numerical(self) -> list[int]:
        return [i for i, c in enumerate(self.columns) if c.kind == NUMERICAL]

    @property
    def categorical(self) -> list[int]:
        return [i for i, c in enumerate(self.columns) if c.kind == CATEGORICAL]

    @property
    def cardinalities(self) -> list[int]:
        """Codes of each categorical column, in the order of ``categorical``."""
        return [self.columns[i].cardinality for i in self.categorical]


@attrs.frozen(eq=False)
class TabularData:
    """Train and test ``rows (N, F)`` float32 with int64 labels ``(N,)`` and the
    ``schema`` that encoded them. Shares the trainer-facing names of ``ImageData``:
    ``train_x``/``test_x`` are the rows."""

    KIND: ClassVar[str] = "table"

    name: str
    train_rows: Tensor
    train_labels: Tensor
    test_rows: Tensor
    test_labels: Tensor
    num_classes: int
    schema: TableSchema
    train_files: None = None  # never streamed
    bad_files: None = None
    mean: tuple[float, ...] = ()  # rows are standardised when encoded: no image statistics
    std: tuple[float, ...] = ()

    def __attrs_post_init__(self) -> None:
        width = self.schema.width
        for split in ("train", "test"):
            x, y = getattr(self, f"{split}_rows"), getattr(self, f"{split}_labels")
            ok = x.dtype == torch.float32 and x.dim() == 2 and x.shape[1] == width
            check_split(self.name, split, x, y, ok, f"float32 (N, {width}) rows")

    @property
    def train_x(self) -> Tensor:
        return self.train_rows

    @property
    def test_x(self) -> Tensor:
        return self.test_rows

    @property
    def num_train(self) -> int:
        return int(self.train_rows.shape[0])

    @property
    def unreadable_files(self) -> list[str]:
        return []

    def context_facts(self) -> dict[str, Any]:
        """What components are built with (``BuildContext`` fields)."""
        return {"in_channels": 0, "image_size": 0, "mean": self.mean, "std": self.std, "modality": self.KIND,
                "table": self.schema}

    def raw_features(self, rows: Tensor) -> Tensor:
        """The no-encoder baseline ``(n, F_num + sum of cardinalities)``: numerical
        entries with a missing value at the train mean (0), categorical codes one-hot."""
        numerical = torch.nan_to_num(rows[:, self.schema.numerical], nan=0.0)
        parts = [numerical]
        for i, k in zip(self.schema.categorical, self.schema.cardinalities, strict=True):
            parts.append(torch.nn.functional.one_hot(rows[:, i].long(), k).float())
        return torch.cat(parts, dim=1)

    def to(self, device: torch.device) -> TabularData:
        return attrs.evolve(self, **{k: getattr(self, k).to(device) for k in
                                     ("train_rows", "train_labels", "test_rows", "test_labels")})


# -- from a DataFrame ----------------------------------------------------------------


def _check_names(frame: Any, key: str, names: list[str]) -> None:
    unknown = [n for n in names if n not in frame.columns]
    if unknown:
        columns = ", ".join(map(str, list(frame.columns)[:30]))
        raise DatasetError(f"data.table.{key}: no column {unknown[0]!r}; the table has {columns}"
                           f"{' ...' if len(frame.columns) > 30 else ''}")


def stratified_split(labels: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Sorted ``(train, test)`` row indices: ``round(test_fraction * n_c)`` rows of every
    class ``c`` drawn for the test split (at least one row of each class stays in train)."""
    if not 0.0 < test_fraction < 1.0:
        raise DatasetError(f"data.table.test_fraction: must be in (0, 1), got {test_fraction}")
    rng = np.random.default_rng(seed)
    test: list[np.ndarray] = []
    for c in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == c))
        n_test = min(round(test_fraction * len(members)), len(members) - 1)
        test.append(members[:n_test])
    test_rows = np.sort(np.concatenate(test))
    train_rows = np.setdiff1d(np.arange(len(labels)), test_rows)
    return train_rows, test_rows


def _column_kind(series: Any, name: str, categorical: set[str], numerical: set[str]) -> str:
    import pandas as pd

    if name in categorical:
        return CATEGORICAL
    if name in numerical:
        return NUMERICAL
    if pd.api.types.is_bool_dtype(series) or not pd.api.types.is_numeric_dtype(series):
        return CATEGORICAL
    return NUMERICAL


def _numbers(series: Any, name: str) -> np.ndarray:
    """A column as float64 (missing = NaN); a value that is not a number is an error."""
    import pandas as pd

    values = pd.to_numeric(series, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
    bad = np.isnan(values) & ~series.isna().to_numpy()
    if bad.any():
        example = series[bad].iloc[0]
        raise DatasetError(f"data.table.numerical: column {name!r} holds {example!r}, not a number; list "
                           f"it under data.table.categorical or clean the value")
    return values


def _encode_numerical(values: np.ndarray, train: np.ndarray, name: str) -> tuple[Column, np.ndarray]:
    seen = values[train][~np.isnan(values[train])]
    if seen.size == 0:
        raise DatasetError(f"{name}: column has no value in the train split; drop it with "
                           f"data.table.drop=[{name}]")
    mean = float(seen.mean())
    std = float(seen.std())
    std = std if std > 0 else 1.0
    return Column(name, NUMERICAL, mean=mean, std=std), (values - mean) / std


def _encode_categorical(series: Any, train: np.ndarray, name: str) -> tuple[Column, np.ndarray]:
    import pandas as pd

    missing = series.isna().to_numpy()
    text = series.astype(str).to_numpy()
    categories = tuple(sorted(set(text[train][~missing[train]].tolist())))
    known = np.isin(text, list(categories))  # values unseen in training: code 0, as missing ones
    categorical = pd.Categorical(np.where(known, text, None), categories=list(categories))
    codes = categorical.codes.astype(np.float64) + 1
    codes[missing] = 0
    return Column(name, CATEGORICAL, categories=categories), codes


def _label_codes(series: Any, label: str) -> tuple[np.ndarray, tuple[str, ...]]:
    import pandas as pd

    missing = int(series.isna().sum())
    if missing:
        raise DatasetError(f"data.table.label: column {label!r} has {missing} missing value(s); drop those "
                           f"rows or fill them before training")
    values = series.to_numpy()
    ordered = sorted(pd.unique(values), key=lambda v: (str(type(v)), v))
    if len(ordered) < 2:
        raise DatasetError(f"data.table.label: column {label!r} has a single class; a label needs two "
                           f"or more")
    codes = pd.Categorical(values, categories=ordered).codes.astype(np.int64)
    return codes, tuple(str(v) for v in ordered)


def from_frame(frame: Any, *, label: str, categorical: list[str] | tuple[str, ...] = (),
               numerical: list[str] | tuple[str, ...] = (), drop: list[str] | tuple[str, ...] = (),
               test_fraction: float = 0.3, split_seed: int = 0, name: str = "table") -> TabularData:
    """A pandas ``DataFrame`` -> ``TabularData``: a stratified train/test split drawn
    with ``split_seed``, then every feature column encoded from the train split alone
    (see the module docstring). Errors name the ``data.table`` key at fault."""
    if not label:
        columns = ", ".join(map(str, list(frame.columns)[:30]))
        raise DatasetError(f"data.table.label: name the label column of {name}; the table has {columns}")
    _check_names(frame, "label", [label])
    for key, names in (("categorical", categorical), ("numerical", numerical), ("drop", drop)):
        _check_names(frame, key, list(names))
    both = sorted(set(categorical) & set(numerical))
    if both:
        raise DatasetError(f"data.table.categorical: column {both[0]!r} is also listed under "
                           f"data.table.numerical; give it one type")
    if label in drop:
        raise DatasetError(f"data.table.drop: {label!r} is the label column")
    features = [c for c in frame.columns if c != label and c not in set(drop)]
    if not features:
        raise DatasetError(f"{name}: no feature column left besides the label {label!r}")
    y, classes = _label_codes(frame[label], label)
    train, test = stratified_split(y, test_fraction, split_seed)
    columns, encoded = [], []
    for col in features:
        series = frame[col]
        kind = _column_kind(series, str(col), set(categorical), set(numerical))
        if kind == NUMERICAL:
            column, values = _encode_numerical(_numbers(series, str(col)), train, str(col))
        else:
            column, values = _encode_categorical(series, train, str(col))
        columns.append(column)
        encoded.append(values)
    rows = torch.from_numpy(np.stack(encoded, axis=1).astype(np.float32))
    labels = torch.from_numpy(y)
    schema = TableSchema(columns=tuple(columns), label=str(label), classes=classes)
    train_t, test_t = torch.from_numpy(train), torch.from_numpy(test)
    return TabularData(name=name, train_rows=rows[train_t], train_labels=labels[train_t],
                       test_rows=rows[test_t], test_labels=labels[test_t], num_classes=len(classes),
                       schema=schema)


# -- sources --------------------------------------------------------------------------


def _file(cfg: Any, kind: str) -> Path:
    if not cfg.root:
        raise DatasetError(f"data.root: data.table.source={kind} reads the file data.root; set "
                           f"data.root=/path/to/table.{kind}")
    path = Path(str(cfg.root)).expanduser()
    if not path.is_file():
        raise DatasetError(f"data.root: {path} is not a file (data.table.source={kind})")
    return path


def _bundled(which: str) -> tuple[Any, str]:
    import sklearn.datasets

    if which not in BUNDLED:
        raise DatasetError(f"data.table.source: unknown bundled table {which!r}; available: "
                           f"{', '.join('sklearn:' + b for b in BUNDLED)}")
    bunch = getattr(sklearn.datasets, f"load_{which}")(as_frame=True)
    return bunch.frame, "target"


def _openml(cfg: Any, data_id: str) -> tuple[Any, str, str]:
    from sklearn.datasets import fetch_openml

    if not data_id.isdigit():
        raise DatasetError(f"data.table.source: openml needs a numeric dataset id (openml:1590), "
                           f"got {data_id!r}")
    home = str(Path(str(cfg.root)).expanduser()) if cfg.root else None
    try:
        bunch = fetch_openml(data_id=int(data_id), as_frame=True, data_home=home, parser="auto")
    except (OSError, ValueError) as err:  # URLError is an OSError
        raise DatasetError(f"data.table.source: OpenML dataset {data_id} is neither cached under "
                           f"data.root={cfg.root} nor reachable ({err})") from None
    target = bunch.target_names[0] if bunch.target_names else ""
    return bunch.frame, target, str(bunch.details.get("name", f"openml{data_id}"))


def read_table(cfg: Any) -> tuple[Any, str, str]:
    """``(DataFrame, default label, name)`` of the ``data.table.source`` a ``data``
    config section names."""
    import pandas as pd

    source = str(cfg.table.source)
    kind, _, arg = source.partition(":")
    if kind == "sklearn":
        frame, label = _bundled(arg)
        return frame, label, arg
    if kind == "openml":
        return _openml(cfg, arg)
    if kind in ("csv", "parquet"):
        path = _file(cfg, kind)
        try:
            frame = pd.read_csv(path) if kind == "csv" else pd.read_parquet(path)
        except ImportError as err:
            raise DatasetError(f"data.table.source={kind}: {err}; pip install pyarrow") from None
        except (OSError, ValueError, pd.errors.ParserError) as err:
            raise DatasetError(f"data.root: {path} is not a readable {kind} table ({err})") from None
        return frame, "", path.stem
    raise DatasetError(f"data.table.source: unknown source {source!r}; available: sklearn:<name>, csv, "
                       f"parquet, openml:<id>")


def load_table(cfg: Any) -> TabularData:
    """The table a ``data`` config section (``name: tabular``) describes."""
    for key, default in (("image_size", 0), ("train_subset", 0), ("test_subset", 0), ("stream", False)):
        if cfg[key] != default:
            raise DatasetError(f"data.{key}: applies to images, not to a table (data.name=tabular)")
    frame, default_label, name = read_table(cfg)
    t = cfg.table
    return from_frame(frame, label=str(t.label or default_label), categorical=list(t.categorical),
                      numerical=list(t.numerical), drop=list(t.drop), test_fraction=float(t.test_fraction),
                      split_seed=int(t.split_seed), name=name)
