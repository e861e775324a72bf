"""Built-in workloads: real input pipelines to measure when the user names no TARGET.

The default is the standard ImageFolder training pipeline (decode JPEG, RandomResizedCrop to
224, random horizontal flip, float tensor normalised with the ImageNet mean and std, integer
label) over real photographs shipped in ``wellfed/workloads/photos`` (CC0 and public domain;
see the README there), or over any ImageFolder directory.
"""

from __future__ import annotations

from wellfed.workloads.imagefolder import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    IMG_EXTENSIONS,
    PHOTOS_DIR,
    ImageFolderDataset,
    PillowTrainTransform,
    builtin_dataset,
    builtin_spec,
    train_transform,
)

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "IMG_EXTENSIONS",
    "PHOTOS_DIR",
    "ImageFolderDataset",
    "PillowTrainTransform",
    "builtin_dataset",
    "builtin_spec",
    "train_transform",
]
