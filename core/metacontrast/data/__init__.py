"""Datasets as uint8 tensors held on the device, and the batch sampler."""

from metacontrast.data.datasets import DatasetError, ImageData, load_dataset, subset_indices
from metacontrast.data.sampler import EpochBatchSampler

__all__ = ["DatasetError", "EpochBatchSampler", "ImageData", "load_dataset", "subset_indices"]
