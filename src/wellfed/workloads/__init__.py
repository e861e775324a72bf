"""Built-in workloads: real input pipelines to measure when the user names no TARGET.

The default is the standard ImageFolder training pipeline (decode JPEG, RandomResizedCrop to
224, random horizontal flip, float tensor normalised with the ImageNet mean and std, integer
label) over real photographs shipped in ``wellfed/workloads/photos`` (CC0 and public domain;
see the README there), or over any ImageFolder directory.
"""

from __future__ import annotations

from typing import Any

from wellfed.errors import ConfigError
from wellfed.target import LoaderSpec, resolve_target
from wellfed.workloads.imagefolder import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    IMG_EXTENSIONS,
    OUTPUTS,
    PHOTOS_DIR,
    ImageFolderDataset,
    PillowCropTransform,
    PillowTrainTransform,
    builtin_dataset,
    builtin_spec,
    decode_spec,
    decode_train_transform,
    device_train_transform,
    split_spec,
    train_transform,
)

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "IMG_EXTENSIONS",
    "OUTPUTS",
    "PHOTOS_DIR",
    "ImageFolderDataset",
    "PillowCropTransform",
    "PillowTrainTransform",
    "builtin_dataset",
    "builtin_spec",
    "decode_spec",
    "decode_train_transform",
    "device_train_transform",
    "resolve_spec",
    "split_spec",
    "train_transform",
]


def resolve_spec(
    target: str | None = None,
    *,
    data: Any = None,
    on_bad_file: str = "fail",
    batch_size: int | None = None,
    purpose: str = "measure",
) -> LoaderSpec:
    """The LoaderSpec a command works on: a TARGET, or the built-in pipeline (over ``data``).

    Args:
        target: ``pkg.module:attr`` or ``path/to/file.py:attr``; None for the built-in workload.
        data: An ImageFolder directory for the built-in pipeline; None for the shipped photos.
        on_bad_file: Built-in pipeline: "fail" at an unreadable image, or "skip" it.
        batch_size: Samples per batch, overriding the target's (>= 1); None keeps it.
        purpose: Completes "both name what to ..." in the conflict error.

    Raises:
        ConfigError: a TARGET and ``data`` together (WF011), or ``batch_size`` < 1 (WF010).
        TargetError: the TARGET cannot be resolved (see ``resolve_target``).
    """
    if target and data:
        raise ConfigError(
            f"Conflicting options: TARGET={target!r} and --data={data!r} both name "
            f"what to {purpose}. Give a TARGET, or --data for the built-in pipeline, not both.",
            code="WF011",
            attribute="data",
            value=data,
        )
    if batch_size is not None and batch_size < 1:
        raise ConfigError(
            f"Invalid option: --batch-size={batch_size} is below 1. Use 1 or more.",
            code="WF010",
            attribute="batch_size",
            value=batch_size,
        )
    spec = resolve_target(target) if target else builtin_spec(data, on_bad_file=on_bad_file)
    return spec.with_batch_size(batch_size) if batch_size is not None else spec
