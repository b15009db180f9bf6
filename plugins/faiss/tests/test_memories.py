"""The key queue and the memory bank against loop references; state round trips."""

from __future__ import annotations

import io

import pytest
import torch
import torch.nn.functional as F

from metacontrast.builder import component_config
from metacontrast.config import ConfigError
from metacontrast.interfaces import BuildContext
from metacontrast.records import Embeddings, Views
from metacontrast_faiss.bank import MemoryBank, MemoryBankConfig
from metacontrast_faiss.queue import KeyQueue, QueueConfig

CTX = BuildContext(in_channels=3, image_size=8, mean=(0.5,) * 3, std=(0.25,) * 3, encoder_dim=6,
                   head_dim=4, num_train=10)


def _loop_enqueue(keys: torch.Tensor, ids: torch.Tensor, pointer: int, new: torch.Tensor,
                  new_ids: torch.Tensor) -> int:
    """One key at a time, the way a FIFO is defined."""
    for row in range(new.shape[0]):
        keys[pointer] = new[row]
        ids[pointer] = new_ids[row]
        pointer = (pointer + 1) % keys.shape[0]
    return pointer


@pytest.mark.parametrize("size", [1, 7, 8])
def test_queue_wraps_around_like_a_loop_for_any_size(size):
    torch.manual_seed(0)
    queue = KeyQueue(QueueConfig(size=size), CTX)
    keys, ids, pointer = queue.keys.clone(), queue.ids.clone(), 0
    assert torch.allclose(keys.norm(dim=1), torch.ones(size))  # starts with random unit keys
    g = torch.Generator().manual_seed(1)
    for n in (3, 5, 2, 19, 8, 1):  # batches smaller, equal to and larger than K
        new = torch.randn(n, 4, generator=g)
        new_ids = torch.randint(0, 100, (n,), generator=g)
        queue.update(new, new_ids)
        pointer = _loop_enqueue(keys, ids, pointer, new, new_ids)
        assert torch.equal(queue.keys, keys) and torch.equal(queue.ids, ids)
        assert int(queue.pointer) == pointer
    assert torch.equal(queue.read(), keys)


def test_queue_refuses_keys_of_the_wrong_shape():
    queue = KeyQueue(QueueConfig(size=4), CTX)
    with pytest.raises(ValueError, match=r"expected keys \(n, 4\)"):
        queue.update(torch.zeros(2, 5), torch.zeros(2, dtype=torch.long))


def _round_trip(module: torch.nn.Module) -> dict:
    buffer = io.BytesIO()
    torch.save(module.state_dict(), buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def test_queue_state_round_trips_exactly_through_a_weights_only_load():
    torch.manual_seed(0)
    queue = KeyQueue(QueueConfig(size=6), CTX)
    queue.update(torch.randn(4, 4), torch.arange(4))
    torch.manual_seed(1)
    other = KeyQueue(QueueConfig(size=6), CTX)
    assert not torch.equal(other.keys, queue.keys)
    other.load_state_dict(_round_trip(queue))
    for name in ("keys", "ids", "pointer"):
        assert torch.equal(getattr(other, name), getattr(queue, name)), name
    new = torch.randn(5, 4)
    queue.update(new, torch.arange(5))
    other.update(new, torch.arange(5))  # and it goes on identically
    assert torch.equal(other.keys, queue.keys) and int(other.pointer) == int(queue.pointer) == 3


def test_memory_bank_momentum_update_is_its_formula_row_by_row():
    torch.manual_seed(0)
    bank = MemoryBank(MemoryBankConfig(momentum=0.5), CTX)
    assert bank.bank.shape == (10, 4)  # one entry per training image by default
    reference = bank.bank.clone()
    keys = torch.randn(6, 4)
    ids = torch.tensor([3, 7, 3, 0, 9, 3])  # id 3 three times: updated in order, like a loop
    bank.update(keys, ids)
    for row in range(6):
        i = int(ids[row])
        v = 0.5 * reference[i] + 0.5 * keys[row]
        reference[i] = v / v.norm()
    assert torch.allclose(bank.bank, reference, atol=1e-6)
    untouched = [1, 2, 4, 5, 6, 8]
    assert torch.allclose(bank.read()[untouched], reference[untouched])


def test_memory_bank_without_normalisation_and_state_round_trip():
    torch.manual_seed(0)
    bank = MemoryBank(MemoryBankConfig(momentum=0.9, normalize=False, size=5), CTX)
    before = bank.bank.clone()
    keys = torch.randn(2, 4)
    bank.update(keys, torch.tensor([1, 4]))
    assert torch.allclose(bank.bank[[1, 4]], 0.9 * before[[1, 4]] + 0.1 * keys)
    other = MemoryBank(MemoryBankConfig(momentum=0.9, normalize=False, size=5), CTX)
    other.load_state_dict(_round_trip(bank))
    assert torch.equal(other.bank, bank.bank)


def test_memory_bank_names_ids_out_of_range_and_samples_reproducibly():
    bank = MemoryBank(MemoryBankConfig(size=5), CTX)
    with pytest.raises(ValueError, match=r"ids must lie in \[0, 5\).*memory.size"):
        bank.update(torch.randn(1, 4), torch.tensor([5]))
    a = bank.sample(7, torch.Generator().manual_seed(3))
    b = bank.sample(7, torch.Generator().manual_seed(3))
    assert a.shape == (7, 4) and torch.equal(a, b)


def test_memory_bank_reads_a_fresh_uniform_sample_that_resumes_exactly():
    bank = MemoryBank(MemoryBankConfig(size=10, read_size=6, read_seed=2), CTX)
    assert MemoryBank(MemoryBankConfig(size=10), CTX).read().shape == (10, 4)  # read_size 0: the whole bank
    first, second = bank.read(), bank.read()
    assert first.shape == (6, 4) and not torch.equal(first, second) and int(bank.reads) == 2
    # every row is an entry of the bank
    assert all(any(torch.equal(row, entry) for entry in bank.bank) for row in first)
    # a bank restored from the state after two reads draws the third read again
    third = bank.read()
    restored = MemoryBank(MemoryBankConfig(size=10, read_size=6, read_seed=2), CTX)
    state = _round_trip(bank)
    state["reads"] = torch.tensor(2)
    restored.load_state_dict(state)
    assert torch.equal(restored.read(), third)
    # the draws are uniform over the entries
    many = MemoryBank(MemoryBankConfig(size=4, read_size=1000, normalize=False), CTX)
    with torch.no_grad():
        many.bank.copy_(torch.arange(4.0)[:, None].expand(4, 4))
    counts = torch.bincount(torch.cat([many.read()[:, 0] for _ in range(20)]).long(), minlength=4)
    assert (counts - 5000).abs().max() < 300  # 20,000 draws, sd ~ 61
    with pytest.raises(ConfigError, match=r"memory: read_size: must be >= 0"):
        component_config(MemoryBank, "memory", {"read_size": -1})


def test_memory_configs_are_checked_with_the_key_named():
    with pytest.raises(ConfigError, match=r"memory: size: must be >= 1"):
        component_config(KeyQueue, "memory", {"size": 0})
    with pytest.raises(ConfigError, match=r"memory: source: unknown source 'q'"):
        component_config(KeyQueue, "memory", {"source": "q"})
    with pytest.raises(ConfigError, match=r"memory: index.kind: unknown index .lsh."):
        component_config(KeyQueue, "memory", {"index": {"kind": "lsh"}})
    with pytest.raises(ConfigError, match=r"memory.momentum"):
        component_config(MemoryBank, "memory", {"momentum": "high"})
    config = component_config(KeyQueue, "memory", {"size": 9, "index": {"kind": "hnsw", "hnsw_m": 8}})
    assert config.size == 9 and config.index.kind == "hnsw" and config.index.hnsw_m == 8


def test_keys_of_picks_the_configured_rows():
    b, n_views = 3, 3
    z = torch.randn(n_views * b, 4)
    h = torch.randn(n_views * b, 6)
    teacher = torch.randn(2 * b, 4)
    emb = Embeddings(h=h, z=z, teacher_z=teacher, teacher_views=(2, 1), n_views=n_views)
    views = Views(images=(torch.zeros(b, 3, 8, 8),) * n_views, index=torch.tensor([5, 6, 7]))
    queue = KeyQueue(QueueConfig(size=4, views=[1]), CTX)
    keys, ids = queue.keys_of(emb, views)
    assert torch.allclose(keys, F.normalize(teacher[b:2 * b], dim=1)) and ids.tolist() == [5, 6, 7]
    bank = MemoryBank(MemoryBankConfig(source="h", views=[0, 2], normalize=False), CTX)
    keys, ids = bank.keys_of(emb, views)
    assert torch.equal(keys, torch.cat([h[:b], h[2 * b:]])) and ids.tolist() == [5, 6, 7, 5, 6, 7]
    with pytest.raises(Exception, match=r"teacher.views to include 0"):
        KeyQueue(QueueConfig(size=4, views=[0]), CTX).keys_of(emb, views)
