"""Static checks of the category 'worker-config': what the workers send to the main process.

Normalised float32 images sent from the workers (WF125, info): 4 bytes per value where the
decoded uint8 image had 1, and normalisation on the CPU that the device does per batch in
microseconds (the uint8 split: ``docs/device.md``).
"""

from __future__ import annotations

from typing import Any

from wellfed.doctor._context import Context
from wellfed.doctor._report import Finding

__all__ = [
    "check_float_images_from_workers",
    "describe_images",
    "float_images_seen_live",
]

#: Transforms whose output is a normalised float32 image, by module and class name (no
#: import: torchvision may be absent or broken). wellfed's built-in float form, torchvision's
#: Normalize (v1 and transforms.v2).
_NORMALIZERS = {
    ("wellfed.workloads.imagefolder", "PillowTrainTransform"),
    ("torchvision.transforms.transforms", "Normalize"),
    ("torchvision.transforms.v2._misc", "Normalize"),
}


_FIX = (
    "Return uint8 (C, H, W) images from __getitem__ (decode and crop only) and flip "
    "and normalise per batch on the device: create_dataloader(..., seed=0, "
    "sample_seeds=True) and wellfed.to_device(loader, 'cuda', transform="
    "wellfed.BatchTransform([RandomHorizontalFlip(), ToFloat(), Normalize(mean, "
    "std)])), the steps from wellfed.device (docs/device.md); for the built-in "
    "workload, builtin_dataset(output='uint8') with device_train_transform(), which "
    "`wellfed tune` measures beside the float form."
)

_ITEMSIZE = {"float16": 2, "bfloat16": 2, "float32": 4, "float64": 8}


def describe_images(images: list[dict[str, Any]]) -> str:
    """``_probe.float_images`` in words: "batch['image'] float32 (1, 3, 32, 48), ..."."""
    return ", ".join(f"{i['path']} {i['dtype']} {tuple(i['shape'])}" for i in images)


def float_images_seen_live(
    ctx: Context, images: list[dict[str, Any]], method: str, path: str
) -> list[Finding]:
    """WF125 from the live probe: the first batch the workers sent holds float images.

    Args:
        images: ``_probe.float_images`` of that batch (path in the batch, dtype, shape, and
            values per sample: ``shape[1:]`` of the probe's batch of one, all of ``shape``
            without a batch dimension).
        method: The start method of the run.
        path: Where the finding points (the dataset's ``__getitem__``/``__iter__``).
    """
    if ctx.num_workers == 0 or not images:
        return []
    first = images[0]
    per_sample = int(first["sample_values"])
    itemsize = _ITEMSIZE.get(str(first["dtype"]), 4)
    seen = describe_images(images)
    f = ctx.finding(
        "WF125",
        "info",
        path,
        f"The workers send float images ({seen}): {itemsize} bytes per value, "
        f"{per_sample * itemsize:,} B per sample where the uint8 image is {per_sample:,} B "
        f"({itemsize}x), and the conversion runs on the CPU, which the device does per batch "
        "in microseconds.",
        _FIX,
        f"confirmed live ({method}): the first batch from the probe's workers",
        (method,),
    )
    return [f] if f is not None else []


def check_float_images_from_workers(ctx: Context) -> list[Finding]:
    """WF125: a dataset transform normalises images to float32 in the workers (info).

    Only with workers (``num_workers`` > 0, or not known): with ``num_workers=0`` nothing
    crosses between processes.
    """
    if ctx.num_workers == 0:
        return []
    walk = ctx.walks.get("dataset")
    if walk is None:
        return []
    for node in walk.nodes:
        kind = (type(node.obj).__module__, type(node.obj).__name__)
        if kind not in _NORMALIZERS:
            continue
        size = getattr(node.obj, "size", 224)
        side = size if isinstance(size, int) else 224
        float_bytes = 3 * side * side * 4
        what = "PillowTrainTransform" if kind[1] == "PillowTrainTransform" else "Normalize"
        f = ctx.finding(
            "WF125",
            "info",
            node.path,
            f"{node.path} is a {kind[0]}.{kind[1]}: the workers send normalised float32 "
            f"images, 4 bytes per value ({float_bytes:,} B for a 3x{side}x{side} sample), 4x "
            "the uint8 image, and normalise on the CPU, which the device does per batch in "
            "microseconds.",
            _FIX,
            f"static: {what} in the dataset's transform (a float32 tensor per sample)",
        )
        return [f] if f is not None else []
    return []
