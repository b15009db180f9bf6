"""Registers the tabular views, encoders and evaluator with metacontrast
(``data=tabular/<table>`` selects them)."""

from __future__ import annotations

from metacontrast import hookimpl
from metacontrast_tabular.encoders import TabularMLP, TabularTransformer
from metacontrast_tabular.few_labels import FewLabelsEvaluator
from metacontrast_tabular.views import TabularViews


@hookimpl
def metacontrast_register_view_generators() -> list[type]:
    return [TabularViews]


@hookimpl
def metacontrast_register_encoders() -> list[type]:
    return [TabularMLP, TabularTransformer]


@hookimpl
def metacontrast_register_evaluators() -> list[type]:
    return [FewLabelsEvaluator]
