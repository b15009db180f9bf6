"""Tabular views and encoders against references written out row by row."""

from __future__ import annotations

import pytest
import torch

from metacontrast.data.tables import CATEGORICAL, NUMERICAL, Column, TableSchema
from metacontrast.interfaces import BuildContext
from metacontrast.model import Model
from metacontrast.records import Batch, ShapeError
from metacontrast_tabular.encoders import (
    ColumnEmbedding,
    TabularMLP,
    TabularMLPConfig,
    TabularTransformer,
    TabularTransformerConfig,
)
from metacontrast_tabular.views import TabularViews, TabularViewsConfig

SCHEMA = TableSchema(columns=(Column("a", NUMERICAL), Column("c", CATEGORICAL, categories=("x", "y", "z")),
                              Column("b", NUMERICAL), Column("d", CATEGORICAL, categories=("u",))),
                     label="label", classes=("0", "1"))


def _context() -> BuildContext:
    return BuildContext(in_channels=0, image_size=0, mean=(), std=(), modality="table", table=SCHEMA)


def _rows(b: int = 12, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    rows = torch.stack([torch.randn(b, generator=g), torch.randint(0, 4, (b,), generator=g).float(),
                        torch.randn(b, generator=g), torch.randint(0, 2, (b,), generator=g).float()], dim=1)
    rows[2, 0] = float("nan")
    return rows


@pytest.mark.parametrize("fraction", [0.0, 0.25, 0.5, 1.0])
def test_cutmix_replaces_the_chosen_fraction_with_the_partners_values(fraction):
    rows = _rows()
    views = TabularViews(TabularViewsConfig(n_views=3, clean_views=1, cutmix_fraction=fraction), _context())(
        Batch(images=rows, index=torch.arange(12)), torch.Generator().manual_seed(1))
    assert torch.equal(views.images[0].nan_to_num(7.0), rows.nan_to_num(7.0))  # the clean view
    k = round(fraction * rows.shape[1])
    for v in (1, 2):
        mask, partner = views.params["cutmix_mask"][v], views.params["cutmix_partner"][v]
        for b in range(rows.shape[0]):
            assert int(partner[b]) != b
            assert int(mask[b].sum()) == k
            for j in range(rows.shape[1]):
                source = rows[int(partner[b]), j] if mask[b, j] else rows[b, j]
                got = views.images[v][b, j]
                assert (torch.isnan(source) and torch.isnan(got)) or got == source


def test_views_are_reproducible_from_the_generator_and_differ_between_draws():
    gen = TabularViews(TabularViewsConfig(), _context())
    batch = Batch(images=_rows(), index=torch.arange(12))
    a = gen(batch, torch.Generator().manual_seed(5))
    b = gen(batch, torch.Generator().manual_seed(5))
    c = gen(batch, torch.Generator().manual_seed(6))
    assert torch.equal(a.params["cutmix_mask"], b.params["cutmix_mask"])
    assert not torch.equal(a.params["cutmix_mask"], c.params["cutmix_mask"])
    weight = a.embedding_mix.weight
    assert torch.equal(weight[0], torch.ones(12)) and torch.allclose(weight[1], torch.full((12,), 0.7))
    assert torch.equal(a.embedding_mix.partner[0], torch.arange(12))


def test_no_embedding_mixup_params_when_mixup_is_off():
    views = TabularViews(TabularViewsConfig(mixup_weight=1.0), _context())(
        Batch(images=_rows(), index=torch.arange(12)), torch.Generator().manual_seed(0))
    assert views.embedding_mix is None


@pytest.mark.parametrize("bad", [{"n_views": 1}, {"clean_views": 2}, {"cutmix_fraction": 1.5},
                                 {"mixup_weight": 0.0}])
def test_view_config_is_checked(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        TabularViewsConfig(**bad)


def test_column_embedding_matches_a_per_entry_reference():
    torch.manual_seed(0)
    embed = ColumnEmbedding(SCHEMA, 5)
    rows = _rows(6)
    tokens = embed(rows)
    assert tokens.shape == (6, 4, 5)
    offsets = {1: 0, 3: 4}  # column c has 4 codes, d follows
    num_slot = {0: 0, 2: 1}
    for b in range(6):
        for j in range(4):
            if j in num_slot:
                s = num_slot[j]
                x = rows[b, j]
                want = embed.missing[s] if torch.isnan(x) else x * embed.weight[s] + embed.bias[s]
            else:
                want = embed.table.weight[offsets[j] + int(rows[b, j])]
            assert torch.allclose(tokens[b, j], want, atol=1e-6)


@pytest.mark.parametrize("cls, config", [(TabularMLP, TabularMLPConfig(embed_dim=4, hidden=[16, 8])),
                                         (TabularTransformer, TabularTransformerConfig(embed_dim=8, heads=2,
                                                                                       dropout=0.0))])
def test_embedding_mixup_is_the_convex_combination_of_the_tokens(cls, config):
    torch.manual_seed(0)
    encoder = cls(config, _context()).eval()
    rows = _rows(6)
    weight = torch.tensor([1.0, 0.7, 0.5, 0.2, 0.9, 0.0])
    partner = torch.tensor([3, 0, 5, 1, 2, 4])
    tokens = encoder.embed(rows)
    mixed = torch.stack([weight[i] * tokens[i] + (1 - weight[i]) * tokens[int(partner[i])] for i in range(6)])
    if cls is TabularMLP:
        want = encoder.mlp(mixed.flatten(1))
    else:
        seq = torch.cat([encoder.cls.expand(6, -1, -1), mixed], dim=1)
        want = encoder.norm(encoder.blocks(seq)[:, 0])
    got = encoder(rows, mix=(weight, partner))
    assert got.shape == (6, encoder.out_dim) and torch.allclose(got, want, atol=1e-5)
    assert torch.allclose(encoder(rows, mix=(torch.ones(6), partner)), encoder(rows), atol=1e-5)
    assert torch.isfinite(got).all()  # the missing entry never leaks a NaN


def test_tabular_components_refuse_images_and_image_encoders_refuse_mixed_views():
    image_ctx = BuildContext(in_channels=3, image_size=8, mean=(0.5,) * 3, std=(0.2,) * 3)
    with pytest.raises(ValueError, match="reads table rows"):
        TabularMLP(TabularMLPConfig(), image_ctx)

    class Plain(torch.nn.Module):
        out_dim = 4

        def forward(self, x):
            return x[:, :4].nan_to_num()

    model = Model(Plain(), torch.nn.Identity(), {}, {})
    views = TabularViews(TabularViewsConfig(), _context())(Batch(images=_rows(), index=torch.arange(12)),
                                                           torch.Generator().manual_seed(0))
    with pytest.raises(ShapeError, match="cannot; choose an encoder that sets MIXES_EMBEDDINGS"):
        model.embed(views)


@pytest.mark.parametrize("kind", [NUMERICAL, CATEGORICAL])
def test_every_parameter_is_used_when_the_table_has_one_kind_of_column(kind):
    """DDP fails on parameters that take no part in the loss."""
    columns = tuple(Column(f"c{j}", kind, categories=("a", "b") if kind == CATEGORICAL else ()) for j in range(3))
    schema = TableSchema(columns=columns, label="y", classes=("0", "1"))
    ctx = BuildContext(in_channels=0, image_size=0, mean=(), std=(), modality="table", table=schema)
    encoder = TabularMLP(TabularMLPConfig(embed_dim=4, hidden=[8]), ctx)
    rows = torch.randint(0, 3, (5, 3)).float()
    encoder(rows).sum().backward()
    unused = [n for n, p in encoder.named_parameters() if p.grad is None]
    assert unused == []
