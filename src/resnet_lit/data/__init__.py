"""DataModules for CIFAR and ImageNet-style image folders, with the paper's augmentations."""

from .cifar import CIFARDataModule
from .decode import BadImageError
from .imagenet import ImageNetDataModule
from .samplers import ShardSampler, shard_indices

__all__ = ["CIFARDataModule", "ImageNetDataModule", "BadImageError", "ShardSampler", "shard_indices"]
