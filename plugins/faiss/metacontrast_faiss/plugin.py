"""Registers the memories (``queue``, ``memory_bank``) and the faiss kNN evaluator
(``knn_faiss``) with metacontrast."""

from __future__ import annotations

from metacontrast import hookimpl
from metacontrast_faiss.bank import MemoryBank
from metacontrast_faiss.knn import FaissKNNEvaluator
from metacontrast_faiss.queue import KeyQueue


@hookimpl
def metacontrast_register_memories() -> list[type]:
    return [KeyQueue, MemoryBank]


@hookimpl
def metacontrast_register_evaluators() -> list[type]:
    return [FaissKNNEvaluator]
