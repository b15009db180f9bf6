"""Datasets held on the device (uint8 images, float table rows), and the batch sampler."""

from metacontrast.data.datasets import DatasetError, ImageData, load_dataset, subset_indices
from metacontrast.data.sampler import EpochBatchSampler
from metacontrast.data.tables import TableSchema, TabularData, from_frame

__all__ = ["DatasetError", "EpochBatchSampler", "ImageData", "TableSchema", "TabularData", "from_frame",
           "load_dataset", "subset_indices"]
