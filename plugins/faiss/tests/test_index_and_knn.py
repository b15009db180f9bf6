"""faiss search and the faiss kNN evaluator against brute-force torch."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from metacontrast.builtin.evaluators import KNNEvaluator
from metacontrast.classifiers import KNNConfig
from metacontrast.records import Features
from metacontrast_faiss.index import IndexConfig, NeighbourIndex, nearest, wants_gpu
from metacontrast_faiss.knn import FaissKNNConfig, FaissKNNEvaluator


def _data(n=2000, t=300, d=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(n, d, generator=g), dim=1), F.normalize(torch.randn(t, d, generator=g), dim=1)


def test_flat_index_returns_the_brute_force_top_k():
    bank, queries = _data()
    scores, idx = NeighbourIndex(32).add(bank).search(queries, 10)
    ref_scores, ref_idx = (queries @ bank.T).topk(10, dim=1)
    assert torch.equal(idx, ref_idx)  # continuous random data: no ties
    assert torch.allclose(scores, ref_scores, atol=1e-5)


def test_ivf_visiting_every_cell_is_exact_and_hnsw_finds_nearly_all():
    bank, queries = _data()
    ref = (queries @ bank.T).topk(10, dim=1).indices
    _, ivf = nearest(bank, queries, 10, IndexConfig(kind="ivf", nlist=16, nprobe=16))
    assert torch.equal(ivf, ref)
    _, few = nearest(bank, queries, 10, IndexConfig(kind="ivf", nlist=16, nprobe=1))
    assert not torch.equal(few, ref)  # one cell of sixteen: approximate, as documented
    _, hnsw = nearest(bank, queries, 10, IndexConfig(kind="hnsw", hnsw_m=16, ef_search=128))
    recall = sum(len(set(a.tolist()) & set(b.tolist())) for a, b in zip(hnsw, ref, strict=True)) / ref.numel()
    assert recall > 0.95


def test_index_errors_name_the_shape():
    index = NeighbourIndex(8)
    with pytest.raises(ValueError, match="empty"):
        index.search(torch.zeros(1, 8), 1)
    with pytest.raises(ValueError, match=r"expected \(N, 8\), got \(3, 4\)"):
        index.add(torch.zeros(3, 4))
    index.add(torch.randn(3, 8))
    with pytest.raises(ValueError, match=r"expected queries \(T, 8\)"):
        index.search(torch.zeros(2, 5), 1)
    assert index.search(torch.randn(2, 8), 10)[1].shape == (2, 3)  # k capped at the bank size


def test_gpu_choice():
    cpu, cuda = torch.device("cpu"), torch.device("cuda", 0)
    assert wants_gpu("auto", cuda, available=True) and not wants_gpu("auto", cpu, available=True)
    assert not wants_gpu("auto", cuda, available=False) and not wants_gpu("never", cuda, available=True)
    assert wants_gpu("always", cpu, available=True)
    with pytest.raises(RuntimeError, match="faiss-gpu"):
        wants_gpu("always", cpu, available=False)


@pytest.mark.parametrize(("k", "vote"), [(1, "weighted"), (20, "weighted"), (10, "majority")])
def test_faiss_knn_equals_brute_force_knn(k, vote):
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(5, 16, generator=g)
    ytr, yte = torch.randint(0, 5, (1500,), generator=g), torch.randint(0, 5, (400,), generator=g)
    xtr = centres[ytr] + 1.5 * torch.randn(1500, 16, generator=g)
    xte = centres[yte] + 1.5 * torch.randn(400, 16, generator=g)
    train, test = Features(xtr, ytr), Features(xte, yte)
    brute = KNNEvaluator(KNNConfig(k=k, temperature=0.07, vote=vote), None).evaluate(train, test)
    fast = FaissKNNEvaluator(FaissKNNConfig(k=k, temperature=0.07, chunk=128, vote=vote), None).evaluate(train, test)
    assert fast == {key.replace("knn", "knn_faiss"): value for key, value in brute.items()}
    assert 0.3 < brute["knn_top1"] < 1.0  # a real, imperfect classification problem
