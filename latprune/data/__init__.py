"""Datasets as uint8 tensors in memory (or image folders streamed from disk): readers, splits and subsets,
tensor augmentations, a batch loader."""

from latprune.data.datasets import (
    DataConfig,
    DatasetInfo,
    DataSplits,
    ImageData,
    Images,
    find_dataset_root,
    in_memory,
    list_datasets,
    load_dataset,
    load_splits,
)
from latprune.data.folder import FolderData
from latprune.data.loader import BatchLoader, epoch_generator, make_loader
from latprune.data.readers import read_cifar, read_cifar_batch, read_idx, read_idx_pair, read_image_folder, resize_uint8
from latprune.data.sampling import class_subset, stratified_split
from latprune.data.transforms import Augment, apply_augment, normalize, random_crop, random_hflip

__all__ = [
    "Augment",
    "BatchLoader",
    "DataConfig",
    "DataSplits",
    "DatasetInfo",
    "FolderData",
    "ImageData",
    "Images",
    "apply_augment",
    "class_subset",
    "epoch_generator",
    "find_dataset_root",
    "in_memory",
    "list_datasets",
    "load_dataset",
    "load_splits",
    "make_loader",
    "normalize",
    "random_crop",
    "random_hflip",
    "read_cifar",
    "read_cifar_batch",
    "read_idx",
    "read_idx_pair",
    "read_image_folder",
    "resize_uint8",
    "stratified_split",
]
