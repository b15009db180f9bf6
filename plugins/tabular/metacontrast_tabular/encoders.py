"""Tabular encoders: one embedding per column, then an MLP or a small transformer.

``ColumnEmbedding`` turns rows ``(N, F)`` (see ``metacontrast.data.tables``) into
column tokens ``(N, F, d)``: a numerical entry ``x`` becomes ``x * w_j + b_j`` (its own
affine map per column, as FT-Transformer does), a missing one (NaN) a learned vector per
column; a categorical code indexes the column's own embedding table (code 0, missing or
unseen, has its row too). Embedding mixup (SAINT) mixes these tokens.
"""

from __future__ import annotations

import attrs
import torch
from torch import Tensor, nn

from metacontrast.data.tables import TableSchema
from metacontrast.interfaces import BuildContext, Encoder


def _schema(context: BuildContext, name: str) -> TableSchema:
    if context.table is None:
        raise ValueError(f"encoder {name!r} reads table rows; the data are {context.modality}s")
    return context.table


class ColumnEmbedding(nn.Module):
    """Rows ``(N, F)`` -> tokens ``(N, F, dim)`` in column order."""

    def __init__(self, schema: TableSchema, dim: int) -> None:
        super().__init__()
        numerical, categorical = schema.numerical, schema.categorical
        self.register_buffer("numerical", torch.tensor(numerical, dtype=torch.long), persistent=False)
        self.register_buffer("categorical", torch.tensor(categorical, dtype=torch.long), persistent=False)
        order = torch.argsort(torch.tensor(numerical + categorical, dtype=torch.long))
        self.register_buffer("order", order, persistent=False)  # back to column order
        cards = schema.cardinalities
        offsets = torch.tensor([0, *cards[:-1]], dtype=torch.long).cumsum(0) if cards else torch.zeros(0)
        self.register_buffer("offsets", offsets.long(), persistent=False)
        # parameters only for the kinds of column the table has (DDP needs every one used)
        n_num = len(numerical)
        self.weight = nn.Parameter(torch.randn(n_num, dim) * 0.1) if n_num else None
        self.bias = nn.Parameter(torch.zeros(n_num, dim)) if n_num else None
        self.missing = nn.Parameter(torch.randn(n_num, dim) * 0.1) if n_num else None
        self.table = nn.Embedding(sum(cards), dim) if cards else None
        if self.table is not None:
            nn.init.normal_(self.table.weight, std=0.1)

    def forward(self, rows: Tensor) -> Tensor:
        parts = []
        if self.weight is not None:
            x = rows[:, self.numerical]  # (N, F_num)
            missing = torch.isnan(x).unsqueeze(-1)
            tokens = torch.nan_to_num(x).unsqueeze(-1) * self.weight + self.bias
            parts.append(torch.where(missing, self.missing.expand_as(tokens), tokens))
        if self.table is not None:
            codes = rows[:, self.categorical].long() + self.offsets
            parts.append(self.table(codes))
        return torch.cat(parts, dim=1)[:, self.order]


def mix_tokens(tokens: Tensor, mix: tuple[Tensor, Tensor] | None) -> Tensor:
    """``w * t_i + (1 - w) * t_partner(i)`` for tokens ``(N, F, d)``, ``mix`` =
    ``(weight (N,), partner (N,))``."""
    if mix is None:
        return tokens
    weight, partner = mix
    w = weight.to(tokens.dtype).view(-1, 1, 1)
    return w * tokens + (1.0 - w) * tokens[partner]


@attrs.define
class TabularMLPConfig:
    """``embed_dim`` per column; ``hidden`` widths of the MLP on the concatenated
    tokens (Linear, LayerNorm, ReLU each); D = the last width."""

    embed_dim: int = 16
    hidden: list[int] = attrs.field(factory=lambda: [256, 256])

    def __attrs_post_init__(self) -> None:
        if self.embed_dim < 1 or not self.hidden or min(self.hidden) < 1:
            raise ValueError(f"embed_dim and hidden: need positive sizes, got {self.embed_dim} and "
                             f"{self.hidden}")


class TabularMLP(Encoder):
    """Rows ``(N, F)`` -> ``h (N, hidden[-1])``: column tokens flattened, then an MLP."""

    NAME = "tabular_mlp"
    Config = TabularMLPConfig
    MODALITIES = ("table",)
    MIXES_EMBEDDINGS = True

    def __init__(self, config: TabularMLPConfig, context: BuildContext) -> None:
        super().__init__()
        schema = _schema(context, self.NAME)
        self.embed = ColumnEmbedding(schema, config.embed_dim)
        layers: list[nn.Module] = []
        width = schema.width * config.embed_dim
        for h in config.hidden:
            layers += [nn.Linear(width, h), nn.LayerNorm(h), nn.ReLU(inplace=True)]
            width = h
        self.mlp = nn.Sequential(*layers)
        self.out_dim = width

    def forward(self, rows: Tensor, mix: tuple[Tensor, Tensor] | None = None) -> Tensor:
        return self.mlp(mix_tokens(self.embed(rows), mix).flatten(1))


@attrs.define
class TabularTransformerConfig:
    """A pre-norm transformer over the column tokens plus a learned ``[CLS]`` token,
    whose output is ``h`` (D = ``embed_dim``)."""

    embed_dim: int = 32
    depth: int = 2
    heads: int = 4
    ffn_mult: int = 2
    dropout: float = 0.1

    def __attrs_post_init__(self) -> None:
        if self.embed_dim % self.heads:
            raise ValueError(f"embed_dim: {self.embed_dim} must be divisible by heads={self.heads}")
        if self.depth < 1 or not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"depth >= 1 and dropout in [0, 1) needed, got {self.depth} and {self.dropout}")


class TabularTransformer(Encoder):
    """Rows ``(N, F)`` -> ``h (N, embed_dim)``: self-attention across columns (SAINT's
    column attention; its row attention is not included)."""

    NAME = "tabular_transformer"
    Config = TabularTransformerConfig
    MODALITIES = ("table",)
    MIXES_EMBEDDINGS = True

    def __init__(self, config: TabularTransformerConfig, context: BuildContext) -> None:
        super().__init__()
        schema = _schema(context, self.NAME)
        d = config.embed_dim
        self.embed = ColumnEmbedding(schema, d)
        self.cls = nn.Parameter(torch.randn(1, 1, d) * 0.1)
        layer = nn.TransformerEncoderLayer(d, config.heads, d * config.ffn_mult, config.dropout,
                                           batch_first=True, norm_first=True)
        self.blocks = nn.TransformerEncoder(layer, config.depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d)
        self.out_dim = d

    def forward(self, rows: Tensor, mix: tuple[Tensor, Tensor] | None = None) -> Tensor:
        tokens = mix_tokens(self.embed(rows), mix)
        tokens = torch.cat([self.cls.expand(tokens.shape[0], -1, -1), tokens], dim=1)
        return self.norm(self.blocks(tokens)[:, 0])
