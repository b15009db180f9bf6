"""The optimization-driven unified contrastive loss (OUCL, equations 7-10) and MetAug's
margins (equation 4, appendix A.2) and margin-injected regularization (equation 5).

Every OUCL form is, for one anchor with positive similarities ``d+ (K+,)`` and negative
similarities ``d- (K-,)``,

``1/beta * log(1 + sum_{k-} sum_{k+} exp(a(d-_{k-}) + b(d+_{k+}) + c))``

with a double sum that separates: ``sum exp(a + b) = exp(logsumexp(a) + logsumexp(b))``,
so the loss is ``softplus(logsumexp(a) + logsumexp(b) + c) / beta``, computed without
forming the ``K- x K+`` pairs and without overflow. Per form:

- ``margin`` (eq. 8): ``a = beta d-``, ``b = -beta d+``, ``c = beta lambda``;
- ``weighted`` (eq. 9): ``a = beta G- (d- - gamma-)``, ``b = -beta G+ (d+ - gamma+)``,
  ``c = 0`` with ``G- = [d- - O-]_+ / phi``, ``G+ = [O+ - d+]_+ / phi`` (``phi`` = 1 is
  Gamma, ``phi`` > 1 the attenuated Gamma-bar of section 4.4);
- ``reduced`` (eq. 10): ``a = beta d-^2``, ``b = beta (d+ - 1)^2``, ``c = -2 beta gamma^2``,
  which is eq. 9 with ``O+ = 1 + gamma``, ``O- = -gamma``, ``gamma+ = 1 - gamma``,
  ``gamma- = gamma`` whenever the cut-offs are inactive (``d`` in ``[-gamma, 1 + gamma]``).

Rows are anchors; boolean masks say which entries of a row are its positives and its
negatives. An anchor without a positive or a negative contributes 0.
"""

from __future__ import annotations

import attrs
import torch
import torch.nn.functional as F
from torch import Tensor

FORMS = ("margin", "weighted", "reduced")
MARGINS = ("large", "medium", "small")


@attrs.define
class OUCLConfig:
    """``form``: margin (eq. 8), weighted (eq. 9) or reduced (eq. 10). ``beta``: the
    temperature of eq. 8-10. ``lam``: lambda of eq. 8. ``o_pos``, ``o_neg``, ``gamma_pos``,
    ``gamma_neg``: O+, O-, gamma+, gamma- of eq. 9. ``phi``: the attenuation of Gamma-bar
    (1: Gamma). ``gamma``: gamma of eq. 10 (0.40, appendix A.4)."""

    form: str = "reduced"
    beta: float = 16.0
    lam: float = 0.5
    o_pos: float = 1.4
    o_neg: float = -0.4
    gamma_pos: float = 0.6
    gamma_neg: float = 0.4
    phi: float = 1.0
    gamma: float = 0.4

    def __attrs_post_init__(self) -> None:
        if self.form not in FORMS:
            raise ValueError(f"form: unknown OUCL form {self.form!r}; available: {', '.join(FORMS)}")
        if self.beta <= 0:
            raise ValueError(f"beta: must be > 0, got {self.beta}")
        if self.phi <= 0:
            raise ValueError(f"phi: must be > 0, got {self.phi}")


def _masked_logsumexp(scores: Tensor, mask: Tensor) -> Tensor:
    """``logsumexp`` over the entries of each row where ``mask`` holds: ``(A,)``
    (``-inf`` for an empty row)."""
    return torch.logsumexp(scores.masked_fill(~mask, float("-inf")), dim=1)


def oucl_per_anchor(pos: Tensor, neg: Tensor, pos_mask: Tensor, neg_mask: Tensor,
                    config: OUCLConfig) -> Tensor:
    """OUCL of each anchor: ``pos (A, P)``, ``neg (A, N)`` similarities with boolean masks
    of the same shapes -> ``(A,)``."""
    c, beta = config, config.beta
    if c.form == "margin":
        a, b, const = beta * neg, -beta * pos, beta * c.lam
    elif c.form == "weighted":
        g_neg = (neg - c.o_neg).clamp_min(0) / c.phi
        g_pos = (c.o_pos - pos).clamp_min(0) / c.phi
        a, b, const = beta * g_neg * (neg - c.gamma_neg), -beta * g_pos * (pos - c.gamma_pos), 0.0
    else:
        a, b, const = beta * neg.square(), beta * (pos - 1).square(), -2 * beta * c.gamma ** 2
    exponent = _masked_logsumexp(a, neg_mask) + _masked_logsumexp(b, pos_mask) + const
    # an anchor with no pair has exponent -inf: softplus(-inf) = 0
    return F.softplus(exponent) / beta


@attrs.define
class Margins:
    """``sigma_pos``, ``sigma_neg``: 0-dim margins of equation 4 (or appendix A.2)."""

    sigma_pos: Tensor
    sigma_neg: Tensor


def margins(pos: Tensor, neg: Tensor, kind: str = "large", pos_mask: Tensor | None = None,
            neg_mask: Tensor | None = None) -> Margins:
    """Margins from the original features' similarities: ``pos (K+,)`` positives,
    ``neg (K-,)`` negatives. With ``min+ = min pos`` and ``max- = max neg``: large (eq. 4)
    ``sigma+ = min(min+, max-)``, ``sigma- = max(min+, max-)``; medium: both their mean;
    small: ``sigma+ = max(...)``, ``sigma- = min(...)``.

    With masks, ``pos`` and ``neg`` are similarity matrices and the entries where
    ``pos_mask``/``neg_mask`` hold count: the same margins without gathering the entries
    (a boolean index would make the host wait for the device). An empty mask then gives
    infinite margins, which the trainer's non-finite check reports."""
    if kind not in MARGINS:
        raise ValueError(f"margin: unknown margin {kind!r}; available: {', '.join(MARGINS)}")
    if pos_mask is not None and neg_mask is not None:
        min_pos = pos.masked_fill(~pos_mask, float("inf")).amin()
        max_neg = neg.masked_fill(~neg_mask, float("-inf")).amax()
        return _margins(min_pos, max_neg, kind)
    if pos.numel() == 0 or neg.numel() == 0:
        raise ValueError(f"margins need positives and negatives, got {pos.numel()} and {neg.numel()}")
    return _margins(pos.min(), neg.max(), kind)


def _margins(min_pos: Tensor, max_neg: Tensor, kind: str) -> Margins:
    low, high = torch.minimum(min_pos, max_neg), torch.maximum(min_pos, max_neg)
    if kind == "large":
        return Margins(low, high)
    if kind == "medium":
        mid = (min_pos + max_neg) / 2
        return Margins(mid, mid)
    return Margins(high, low)


def margin_regularization(aug_pos: Tensor, aug_neg: Tensor, m: Margins, pos_mask: Tensor | None = None,
                          neg_mask: Tensor | None = None) -> Tensor:
    """``R_sigma`` (eq. 5): mean of ``[d(z^+) - sigma+]_+`` over positives that pair an
    original with an augmented feature ``aug_pos (K^+,)``, plus the mean of
    ``[sigma- - d(z^-)]_+`` over such negatives ``aug_neg (K^-,)``. 0-dim. With masks, the
    means run over the entries of the matrices ``aug_pos``/``aug_neg`` the masks select."""
    if pos_mask is not None and neg_mask is not None:
        above = (aug_pos - m.sigma_pos).clamp_min(0) * pos_mask
        below = (m.sigma_neg - aug_neg).clamp_min(0) * neg_mask
        return above.sum() / pos_mask.sum() + below.sum() / neg_mask.sum()
    return (aug_pos - m.sigma_pos).clamp_min(0).mean() + (m.sigma_neg - aug_neg).clamp_min(0).mean()
