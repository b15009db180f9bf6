"""``device_tensor``: the tensor ``torch.tensor`` makes, written by fills on the device."""

from __future__ import annotations

import pytest
import torch

from metacontrast.device_constants import device_tensor
from metacontrast.host_reads import HostReads


@pytest.mark.parametrize(("values", "dtype"), [((0.299, 0.587, 0.114), torch.float32),
                                               ((1, 5, 0, -3), torch.long),
                                               ((0.0, 1.0, 1.0), torch.bool),
                                               ((2.5,), torch.float64), ((), torch.float32)])
def test_device_tensor_equals_torch_tensor_and_reads_nothing_from_the_host(values, dtype):
    device_tensor.cache_clear()
    with HostReads() as reads:
        made = device_tensor(values, torch.device("cpu"), dtype)
    assert reads.total == 0  # torch.tensor would count: a copy from the host
    expected = torch.tensor(values, dtype=dtype)
    assert made.dtype == expected.dtype and made.shape == expected.shape
    assert torch.equal(made, expected)
    assert device_tensor(values, torch.device("cpu"), dtype) is made  # made once


def test_device_tensor_made_in_inference_mode_is_usable_by_autograd():
    device_tensor.cache_clear()
    with torch.inference_mode():
        weights = device_tensor((1.0, 2.0), torch.device("cpu"), torch.float32)
    x = torch.ones(2, requires_grad=True)
    (x * weights).sum().backward()
    assert torch.equal(x.grad, torch.tensor([1.0, 2.0]))
