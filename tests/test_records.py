import pytest
import torch

from metacontrast.records import Batch, Embeddings, Episode, LossTerms, ShapeError, Views


def _views(b=4, v=2):
    return Views(images=tuple(torch.zeros(b, 3, 8, 8) for _ in range(v)), index=torch.arange(b))


def test_batch_rejects_float_images_and_bad_index():
    with pytest.raises(ShapeError, match="uint8"):
        Batch(images=torch.zeros(2, 3, 4, 4), index=torch.arange(2))
    with pytest.raises(ShapeError, match=r"index must be \(B,\)"):
        Batch(images=torch.zeros(2, 3, 4, 4, dtype=torch.uint8), index=torch.arange(3))


def test_views_check_batch_and_params():
    with pytest.raises(ShapeError, match="view 1"):
        Views(images=(torch.zeros(4, 3, 8, 8), torch.zeros(3, 3, 8, 8)), index=torch.arange(4))
    with pytest.raises(ShapeError, match="param 'crop'"):
        Views(images=(torch.zeros(4, 3, 8, 8),), index=torch.arange(4), params={"crop": torch.zeros(4, 4)})


def test_pairs_episode_is_b_way_all_pairs():
    ep = Episode.from_views(_views(b=3, v=2))
    assert ep.n_way == 3 and ep.exclude_self
    assert ep.labels.tolist() == [0, 1, 2, 0, 1, 2]
    assert ep.support.tolist() == ep.query.tolist() == list(range(6))


def test_n_way_k_shot_episode_splits_views():
    ep = Episode.from_views(_views(b=2, v=3), n_support_views=2)
    assert ep.support.tolist() == [0, 1, 2, 3]
    assert ep.query.tolist() == [4, 5]
    with pytest.raises(ShapeError, match="support_views must be in"):
        Episode.from_views(_views(b=2, v=3), n_support_views=3)


def test_embeddings_and_loss_terms():
    with pytest.raises(ShapeError, match="disagree"):
        Embeddings(h=torch.zeros(4, 8), z=torch.zeros(3, 2))
    emb = Embeddings(h=torch.zeros(4, 8), z=torch.arange(8.0).view(4, 2))
    assert emb.view(1, 2).tolist() == [[4.0, 5.0], [6.0, 7.0]]
    terms = LossTerms({"a": torch.tensor(1.5), "b": torch.tensor(2.0)})
    assert terms.total.item() == 3.5
    with pytest.raises(ShapeError, match="0-dim"):
        LossTerms({"a": torch.ones(2)})
