"""ImageFolder decode-and-augment: the standard image classification training input.

torchvision is optional: when it is installed its transforms are used; otherwise a Pillow
implementation of the same four steps, written to match torchvision's algorithms.

The split form (``builtin_dataset(output="uint8")``, issue 17): workers decode and crop to
uint8 (3, size, size), a quarter of the float32 bytes; flip and normalise run per batch on
the device (``device_train_transform()`` with ``wellfed.to_device``). The decode form
(``output="encoded"``): workers only read each file's bytes; decode, crop, flip and
normalise run per batch on the device (``decode_train_transform(device)``, batches collated
by ``wellfed.device.collate_encoded``).
"""

from __future__ import annotations

import copy
import dataclasses
import errno
import logging
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from wellfed.errors import BadFileError, ConfigError, TargetError

if TYPE_CHECKING:
    from wellfed.target import LoaderSpec

logger = logging.getLogger(__name__)

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
    "split_spec",
    "train_transform",
]

#: Per-channel mean and std of ImageNet's training set, RGB, in [0, 1] units.
#: Source: torchvision's ImageNet reference recipe (references/classification/presets.py).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

#: File endings ImageFolder accepts. Source: torchvision.datasets.folder.IMG_EXTENSIONS.
IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")

#: The shipped photos (10 files, 2 classes; licences in photos/README.md).
PHOTOS_DIR = Path(__file__).resolve().parent / "photos"

#: How often the built-in workload reads each shipped photo per epoch: 10 photos x 32 = 320
#: samples, 10 batches of 32, enough for several measurement windows per epoch.
BUILTIN_REPEAT = 32

#: What the built-in workload's workers return: "float" (normalised float32, the standard
#: pipeline), "uint8" (cropped uint8; flip and normalise on the device) or "encoded" (the
#: file's bytes; decode, crop, flip and normalise on the device).
OUTPUTS = ("float", "uint8", "encoded")


class PillowTrainTransform:
    """RandomResizedCrop, RandomHorizontalFlip, to float tensor, Normalize, with Pillow.

    The random draws come from ``wellfed.sample_generator()``: the per-sample generator in a
    seeded wellfed loader (so batches are bit-identical under worker processes, thread
    workers and the main process alike), a freshly OS-seeded one elsewhere. Unlike
    torchvision's transforms, which draw from torch's process-wide RNG, it is therefore
    reproducible under thread workers (threads share the process-wide RNG).

    Args:
        size: Output side in pixels; the output is a float32 tensor of shape (3, size, size).
        scale: Range of the crop's area as a fraction of the image's area.
        ratio: Range of the crop's aspect ratio (width / height).
        mean: Per-channel mean subtracted, RGB order, [0, 1] units.
        std: Per-channel std divided by.

    Source:
        torchvision.transforms.RandomResizedCrop.get_params (10 attempts, then a central
        crop), defaults scale=(0.08, 1.0), ratio=(3/4, 4/3), bilinear resampling.
    """

    def __init__(
        self,
        size: int = 224,
        scale: tuple[float, float] = (0.08, 1.0),
        ratio: tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0),
        mean: tuple[float, float, float] = IMAGENET_MEAN,
        std: tuple[float, float, float] = IMAGENET_STD,
    ) -> None:
        self.size = size
        self.scale = scale
        self.ratio = ratio
        self.mean = mean
        self.std = std

    def crop_box(self, width: int, height: int, generator: Any = None) -> tuple[int, int, int, int]:
        """Draw a crop: (left, top, right, bottom) in pixels, torchvision's algorithm.

        Args:
            width: Image width in pixels.
            height: Image height in pixels.
            generator: The ``torch.Generator`` to draw from; None: ``sample_generator()``.
        """
        import torch

        from wellfed.seeding import sample_generator

        g = generator if generator is not None else sample_generator()
        area = width * height
        log_lo, log_hi = math.log(self.ratio[0]), math.log(self.ratio[1])
        for _ in range(10):
            target_area = (
                area * torch.empty(1).uniform_(self.scale[0], self.scale[1], generator=g).item()
            )
            aspect = math.exp(torch.empty(1).uniform_(log_lo, log_hi, generator=g).item())
            w = round(math.sqrt(target_area * aspect))
            h = round(math.sqrt(target_area / aspect))
            if 0 < w <= width and 0 < h <= height:
                top = int(torch.randint(0, height - h + 1, size=(1,), generator=g).item())
                left = int(torch.randint(0, width - w + 1, size=(1,), generator=g).item())
                return left, top, left + w, top + h
        in_ratio = width / height
        if in_ratio < min(self.ratio):
            w, h = width, round(width / min(self.ratio))
        elif in_ratio > max(self.ratio):
            w, h = round(height * max(self.ratio)), height
        else:
            w, h = width, height
        top, left = (height - h) // 2, (width - w) // 2
        return left, top, left + w, top + h

    def __call__(self, image: Any) -> Any:
        """Map a PIL image (any mode) to a normalised float32 tensor (3, size, size)."""
        import numpy as np
        import torch
        from PIL import Image

        from wellfed.seeding import sample_generator

        if image.mode != "RGB":
            image = image.convert("RGB")
        g = sample_generator()
        width, height = image.size
        box = self.crop_box(width, height, generator=g)
        image = image.resize((self.size, self.size), Image.Resampling.BILINEAR, box=box)
        if torch.rand(1, generator=g).item() < 0.5:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        array = np.array(image, dtype=np.uint8)  # (H, W, 3), a writable copy
        tensor = torch.from_numpy(array).permute(2, 0, 1).float().div_(255.0)
        mean = torch.tensor(self.mean).view(3, 1, 1)
        std = torch.tensor(self.std).view(3, 1, 1)
        return tensor.sub_(mean).div_(std)

    def __repr__(self) -> str:
        return (
            f"PillowTrainTransform(size={self.size}, scale={self.scale}, "
            f"ratio=({self.ratio[0]:.3f}, {self.ratio[1]:.3f}))"
        )


class PillowCropTransform:
    """RandomResizedCrop to a uint8 tensor (3, size, size): the worker half of the split form.

    The crop is ``PillowTrainTransform``'s, drawn from ``wellfed.sample_generator()`` in the
    same order, so a sample gets the same crop (the same pixels, before flip and
    normalisation) in both forms. Flip and normalisation are left to the device:
    ``device_train_transform()``, given to ``wellfed.to_device``, draws each sample's flip
    from its seed (a seeded loader with ``sample_seeds=True``). Per sample this sends
    3 x size x size bytes from the worker instead of 4 times that (float32).

    Args:
        size: Output side in pixels.
        scale: Range of the crop's area as a fraction of the image's area.
        ratio: Range of the crop's aspect ratio (width / height).
    """

    def __init__(
        self,
        size: int = 224,
        scale: tuple[float, float] = (0.08, 1.0),
        ratio: tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0),
    ) -> None:
        self.size = size
        self.scale = scale
        self.ratio = ratio

    def __call__(self, image: Any) -> Any:
        """Map a PIL image (any mode) to a uint8 tensor (3, size, size)."""
        import numpy as np
        import torch
        from PIL import Image

        from wellfed.seeding import sample_generator

        if image.mode != "RGB":
            image = image.convert("RGB")
        crop = PillowTrainTransform(self.size, self.scale, self.ratio)
        width, height = image.size
        box = crop.crop_box(width, height, generator=sample_generator())
        image = image.resize((self.size, self.size), Image.Resampling.BILINEAR, box=box)
        array = np.array(image, dtype=np.uint8)  # (H, W, 3), a writable copy
        return torch.from_numpy(array).permute(2, 0, 1).contiguous()

    def __repr__(self) -> str:
        return (
            f"PillowCropTransform(size={self.size}, scale={self.scale}, "
            f"ratio=({self.ratio[0]:.3f}, {self.ratio[1]:.3f}))"
        )


def device_train_transform() -> Any:
    """The device half of the split form: flip, to float, normalise, per batch.

    ``wellfed.BatchTransform([RandomHorizontalFlip(), ToFloat(), Normalize(IMAGENET_MEAN,
    IMAGENET_STD)], key=0)``: for batches ``(uint8 images (B, 3, H, W), labels (B,))``, or
    their ``SeededBatch``; returns ``(float32 images (B, 3, H, W), labels)``, normalised as
    ``PillowTrainTransform`` does (the same float32 arithmetic). Flip before the conversion:
    it moves a quarter of the bytes.

    Example:
        >>> ds = builtin_dataset(output="uint8")
        >>> loader = wellfed.create_dataloader(ds, batch_size=32, seed=0, sample_seeds=True)
        >>> for images, labels in wellfed.to_device(loader, "cuda",
        ...                                         transform=device_train_transform()):
        ...     ...
    """
    from wellfed.device import (
        BatchTransform,
        Normalize,
        RandomHorizontalFlip,
        ToFloat,
    )

    return BatchTransform(
        [RandomHorizontalFlip(), ToFloat(), Normalize(IMAGENET_MEAN, IMAGENET_STD)], key=0
    )


def decode_train_transform(device: Any = "cpu", size: int = 224) -> Any:
    """The device half of the decode form: decode, crop, flip, to float, normalise, per batch.

    ``wellfed.BatchTransform([DecodeImages(device), ToFloat(), RandomResizedCrop(size),
    RandomHorizontalFlip(), Normalize(IMAGENET_MEAN, IMAGENET_STD)], key=0)``, for batches
    ``(EncodedImages, labels (B,))`` from ``builtin_dataset(output="encoded")`` collated by
    ``wellfed.device.collate_encoded`` (or their ``SeededBatch``); returns ``(float32 images
    (B, 3, size, size), labels)``. ``DecodeImages`` uses nvJPEG on a CUDA device where
    torchvision allows it, else Pillow; ``ToFloat`` converts each decoded image (its own
    size) as the other forms do; ``RandomResizedCrop`` crops each from its seed
    (torchvision's crop parameters, ``F.interpolate`` with antialias) and makes the batch.
    Crop and resample differ from the float form's Pillow resize, so its pixels are not the
    float form's: the same augmentation, not the same numbers.

    Args:
        device: Where to decode: "cpu", "cuda", a ``torch.device``.
        size: Output side in pixels.

    Example:
        >>> ds = builtin_dataset(output="encoded")
        >>> loader = wellfed.create_dataloader(ds, batch_size=32, seed=0, sample_seeds=True,
        ...                                    collate_fn=collate_encoded)
        >>> for images, labels in wellfed.to_device(loader, "cuda",
        ...                                         transform=decode_train_transform("cuda")):
        ...     ...
    """
    from wellfed.device import (
        BatchTransform,
        DecodeImages,
        Normalize,
        RandomHorizontalFlip,
        RandomResizedCrop,
        ToFloat,
    )

    return BatchTransform(
        [
            DecodeImages(device),
            ToFloat(),
            RandomResizedCrop(size),
            RandomHorizontalFlip(),
            Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ],
        key=0,
    )


def train_transform(size: int = 224) -> Callable[[Any], Any]:
    """The standard training transform: torchvision's when installed, else PillowTrainTransform.

    Returns:
        A callable mapping a PIL image to a float32 tensor (3, size, size).
    """
    try:
        from torchvision import transforms as T
    except ImportError:
        return PillowTrainTransform(size)
    except Exception as exc:  # a broken install raises anything at import
        import torch

        # A torchvision built for another torch (a CUDA wheel beside CPU torch) imports far
        # enough to raise RuntimeError "operator torchvision::nms does not exist" (issue 15).
        logger.warning(
            "torchvision is installed but fails to import (%s: %s); using the Pillow "
            "transform instead. Fix: install the torchvision build that matches torch %s.",
            type(exc).__name__,
            str(exc).splitlines()[0] if str(exc) else "",
            torch.__version__,
        )
        return PillowTrainTransform(size)
    return T.Compose(  # type: ignore[no-any-return]
        [
            T.RandomResizedCrop(size),
            T.RandomHorizontalFlip(),
            T.ToTensor(),
            T.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )


class ImageFolderDataset:
    """Images in ``root/<class>/<file>``, decoded with Pillow; labels are class indices.

    Files whose ending is not in IMG_EXTENSIONS are left out (as torchvision's ImageFolder
    does) and listed in ``skipped``. Every kept file's header is read at construction
    (Pillow reads the header only, not the pixels), so a file that is no image at all is
    caught before any worker starts; a file whose pixels fail to decode is caught when read.

    Args:
        root: Folder with one sub-folder per class.
        transform: Callable applied to the PIL image; None returns the PIL image. With
            ``encoded=True``, applied to the bytes tensor.
        on_bad_file: "fail" raises BadFileError naming the file (an image ending whose
            header does not parse, or a dangling symlink: path and target), and TargetError
            for a class folder with no readable image; "skip" leaves such files out of the
            dataset (listed in ``skipped``, counted in one logged warning), keeps an empty
            class's label (with a warning), and, for a file whose pixels fail to decode
            later, returns the next good sample instead.
        repeat: Each file appears this many times per epoch (index i reads file i % n).
        encoded: True: ``__getitem__`` reads the file's bytes and does not decode them: it
            returns (1-D uint8 tensor of the bytes, ``torch.frombuffer``, label), for
            ``wellfed.device.collate_encoded`` and a decode step on the device. The same
            files and labels (headers are still read at construction); a file whose pixels
            fail to decode is then found by the decode step (WF704), not here.

    Attributes:
        classes: Class names, sorted.
        samples: (path, class index) for each kept file.
        skipped: (path, reason) for each file left out.

    Raises:
        TargetError: root is missing or holds no image (WF005, WF007); with
            on_bad_file="fail", a class folder holds no readable image (WF021), as
            torchvision's ImageFolder raises FileNotFoundError for it.
        BadFileError: with on_bad_file="fail", a file's header does not parse or it is a
            symlink whose target is missing (WF020).
        ConfigError: on_bad_file is neither "fail" nor "skip", or repeat < 1 (WF010).
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        transform: Callable[[Any], Any] | None = None,
        *,
        on_bad_file: str = "fail",
        repeat: int = 1,
        encoded: bool = False,
    ) -> None:
        if on_bad_file not in ("fail", "skip"):
            raise ConfigError(
                f"Invalid option: on_bad_file={on_bad_file!r} is not one of 'fail', 'skip'. "
                "Use 'fail' to stop at a broken file or 'skip' to leave it out.",
                code="WF010",
                attribute="on_bad_file",
                value=on_bad_file,
            )
        if repeat < 1:
            raise ConfigError(
                f"Invalid option: repeat={repeat} is below 1. Use 1 or more.",
                code="WF010",
                attribute="repeat",
                value=repeat,
            )
        self.root = str(Path(root))
        self.transform = transform
        self.on_bad_file = on_bad_file
        self.repeat = repeat
        self.encoded = bool(encoded)
        root_path = Path(root)
        if not root_path.is_dir():
            raise TargetError(
                f"Image folder not found: root={self.root!r} is not a directory. "
                "Pass a folder laid out as root/<class>/<image>, e.g. "
                "hymenoptera_data/train.",
                code="WF007",
                value=self.root,
            )
        self.classes = sorted(d.name for d in root_path.iterdir() if d.is_dir())
        samples: list[tuple[str, int]] = []
        skipped: list[tuple[str, str]] = []
        unreadable: list[str] = []  # files skipped as unreadable (not for their ending)
        per_class = [0] * len(self.classes)
        for index, name in enumerate(self.classes):
            for path in sorted((root_path / name).rglob("*")):
                if path.is_file():
                    if path.suffix.lower() not in IMG_EXTENSIONS:
                        skipped.append(
                            (
                                str(path),
                                f"ending {path.suffix!r} is not an image ending ImageFolder reads",
                            )
                        )
                        continue
                    reason = _header_problem(path)
                elif path.is_symlink() and path.suffix.lower() in IMG_EXTENSIONS:
                    reason = _broken_link_problem(path)  # dangling, a loop: None if a folder
                    if reason is None:
                        continue
                else:
                    continue  # a folder (its files are listed too), a socket, a pipe
                if reason is not None:
                    if on_bad_file == "fail":
                        raise BadFileError(
                            f"Unreadable image: {path} {reason}. Remove or replace the file, or "
                            "pass --on-bad-file skip (on_bad_file='skip') to leave it out.",
                            code="WF020",
                            path=str(path),
                            index=None,
                        )
                    skipped.append((str(path), reason))
                    unreadable.append(f"{path} {reason}")
                    continue
                samples.append((str(path), index))
                per_class[index] += 1
        if not samples:
            raise TargetError(
                f"Empty dataset: root={self.root!r} holds no readable image in class "
                f"sub-folders ({len(self.classes)} sub-folders, {len(skipped)} files left out). "
                "Point at a folder laid out as root/<class>/<image>.",
                code="WF005",
                value=self.root,
            )
        self.samples = samples
        self.skipped = tuple(skipped)
        empty = [name for name, count in zip(self.classes, per_class, strict=True) if not count]
        if empty:
            folders = ", ".join(
                f"{root_path / name} (label {self.classes.index(name)})" for name in empty[:5]
            ) + (f" and {len(empty) - 5} more" if len(empty) > 5 else "")
            if on_bad_file == "fail":
                raise TargetError(
                    f"Empty class folder: {folders} holds no readable image (endings "
                    f"{', '.join(IMG_EXTENSIONS)}), so that class would never appear in a "
                    "batch; torchvision's ImageFolder refuses it too (\"Found no valid file "
                    'for the classes ..."). Add images, remove the folder (the labels after '
                    "it then shift down by one), or pass --on-bad-file skip "
                    "(on_bad_file='skip') to go on without it, keeping every label.",
                    code="WF021",
                    value=[str(root_path / name) for name in empty],
                )
            logger.warning(
                "ImageFolder %s: %d class folder(s) hold no readable image: %s; those "
                "classes never appear in a batch (on_bad_file='skip')",
                self.root,
                len(empty),
                folders,
            )
        if unreadable:
            logger.warning(
                "ImageFolder %s: left out %d unreadable file(s) (on_bad_file='skip'): %s",
                self.root,
                len(unreadable),
                "; ".join(unreadable)[:1000],
            )
        for skipped_path, reason in skipped:
            logger.info("left out %s: %s", skipped_path, reason)

    def __len__(self) -> int:
        return len(self.samples) * self.repeat

    def _load(self, index: int) -> tuple[Any, int]:
        from PIL import Image

        path, label = self.samples[index % len(self.samples)]
        if self.encoded:
            import torch

            with open(path, "rb") as f:
                data = bytearray(f.read())  # writable: frombuffer warns on read-only bytes
            return torch.frombuffer(data, dtype=torch.uint8), label
        with open(path, "rb") as f:
            image = Image.open(f)
            image.load()
        return image, label

    def __getitem__(self, index: int) -> tuple[Any, int]:
        """Return (image, label): the transformed image and the class index (int).

        With ``encoded=True``: (the file's bytes, a 1-D uint8 tensor, label).
        """
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} samples")
        attempts = len(self.samples) if self.on_bad_file == "skip" else 1
        for step in range(attempts):
            try:
                image, label = self._load(index + step)
                break
            except (OSError, SyntaxError, ValueError) as exc:
                path = self.samples[(index + step) % len(self.samples)][0]
                if self.on_bad_file == "fail":
                    raise BadFileError(
                        f"Unreadable image: sample {index} ({path}) failed to decode: {exc}. "
                        "Remove or replace the file, or pass --on-bad-file skip "
                        "(on_bad_file='skip') to read the next good sample instead.",
                        code="WF020",
                        path=path,
                        index=index,
                    ) from exc
                logger.debug(
                    "sample %d: %s failed to decode (%s); reading the next", index, path, exc
                )
        else:
            raise BadFileError(
                f"Unreadable images: no file under {self.root} decodes. Check the folder.",
                code="WF020",
                path=self.root,
                index=index,
            )
        if self.transform is not None:
            image = self.transform(image)
        return image, label

    def __repr__(self) -> str:
        return (
            f"ImageFolderDataset(root={self.root!r}, files={len(self.samples)}, "
            f"classes={len(self.classes)}, repeat={self.repeat}, transform={self.transform!r}"
            + (", encoded=True)" if self.encoded else ")")
        )


def _broken_link_problem(path: Path) -> str | None:
    """Why a symlink cannot be read as a file (dangling, a loop), or None when it can be
    followed (to a folder, whose files rglob lists, or another non-file)."""
    try:
        target = os.readlink(path)
    except OSError as exc:
        return f"is a symlink that cannot be read ({exc.strerror})"
    try:
        os.stat(path)
    except OSError as exc:
        where = "" if os.path.isabs(target) else f" (relative to {path.parent})"
        if exc.errno == errno.ENOENT:
            return f"is a dangling symlink: its target {target!r}{where} does not exist"
        return f"is a symlink to {target!r}{where} that cannot be followed ({exc.strerror})"
    return None


def _header_problem(path: Path) -> str | None:
    """Why a file's image header does not parse, or None when it does."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            width, height = image.size
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        return f"is not a readable image ({type(exc).__name__}: {exc})"
    if width < 1 or height < 1:
        return f"has an empty size {width}x{height}"
    return None


def builtin_dataset(
    data: str | os.PathLike[str] | None = None,
    *,
    on_bad_file: str = "fail",
    size: int = 224,
    output: str = "float",
) -> ImageFolderDataset:
    """The built-in workload's dataset: ImageFolder decode + augment.

    Always ``PillowTrainTransform`` (even where torchvision is installed): its randomness
    comes from ``wellfed.sample_generator()``, so the workload is reproducible under thread
    workers and ``wellfed tune`` can measure and recommend them.

    Args:
        data: An ImageFolder directory; None uses the shipped photos, each read
            BUILTIN_REPEAT times per epoch (10 photos, 320 samples).
        on_bad_file: "fail" or "skip" (see ImageFolderDataset).
        size: Crop side in pixels.
        output: "float": the whole pipeline in the workers (``PillowTrainTransform``);
            "uint8": the split form, decode and crop only (``PillowCropTransform``), flip and
            normalise on the device with ``device_train_transform()``; "encoded": the decode
            form, the file's bytes only (``ImageFolderDataset(..., encoded=True)``), decode,
            crop, flip and normalise on the device with ``decode_train_transform(device)``;
            collate its samples with ``wellfed.device.collate_encoded``.

    Returns:
        A map-style dataset of (float32 tensor (3, size, size), int label), with
        ``output="uint8"`` of (uint8 tensor (3, size, size), int label), with
        ``output="encoded"`` of (uint8 tensor (N,): the file's N bytes, int label). The same
        files and labels in every form (the .gif placeholder among the Hymenoptera photos is
        left out by its ending in each).

    Raises:
        ConfigError: ``output`` is not one of OUTPUTS (WF010).
    """
    if output not in OUTPUTS:
        raise ConfigError(
            f"Invalid option: output={output!r} is not one of 'float', 'uint8', 'encoded'. "
            "Use 'float' (normalised float32 from the workers), 'uint8' (flip and normalise "
            "on the device) or 'encoded' (the file's bytes; decode on the device).",
            code="WF010",
            attribute="output",
            value=output,
        )
    transform: Any = (
        PillowTrainTransform(size)
        if output == "float"
        else PillowCropTransform(size)
        if output == "uint8"
        else None
    )
    encoded = output == "encoded"
    if data is None:
        return ImageFolderDataset(
            PHOTOS_DIR, transform, on_bad_file=on_bad_file, repeat=BUILTIN_REPEAT, encoded=encoded
        )
    return ImageFolderDataset(data, transform, on_bad_file=on_bad_file, encoded=encoded)


def builtin_spec(
    data: str | os.PathLike[str] | None = None,
    *,
    on_bad_file: str = "fail",
    batch_size: int = 32,
    output: str = "float",
) -> LoaderSpec:
    """The built-in workload as a LoaderSpec: shuffled batches of 32 (3, 224, 224) images.

    ``output="uint8"``: the workers' half of the split form (see ``builtin_dataset``);
    ``output="encoded"``: the workers' half of the decode form, collated by
    ``wellfed.device.collate_encoded`` (batches ``(EncodedImages, labels)``).
    """
    from wellfed.target import LoaderSpec

    dataset = builtin_dataset(data, on_bad_file=on_bad_file, output=output)
    backend = (
        "torchvision"
        if not isinstance(dataset.transform, (PillowTrainTransform, PillowCropTransform))
        and not dataset.encoded
        else "Pillow"
    )
    if data is None:
        where = f"{len(dataset.samples)} shipped photos x {dataset.repeat}"
    else:
        where = f"{len(dataset.samples)} images in {dataset.root}"
    skipped = f", {len(dataset.skipped)} files left out" if dataset.skipped else ""
    description = (
        f"ImageFolder: JPEG decode, RandomResizedCrop(224), flip, normalize ({backend}) "
        f"over {where}{skipped}"
    )
    if output == "uint8":
        description = (
            f"ImageFolder, split form: JPEG decode, RandomResizedCrop(224) to uint8 "
            f"({backend}; flip and normalize on the device) over {where}{skipped}"
        )
    collate_fn = None
    if output == "encoded":
        from wellfed.device import collate_encoded

        collate_fn = collate_encoded
        description = (
            f"ImageFolder, decode form: file bytes from the workers (decode, "
            f"RandomResizedCrop(224), flip and normalize on the device) over {where}{skipped}"
        )
    return LoaderSpec(
        dataset=dataset,
        description=description,
        source="builtin",
        batch_size=batch_size,
        batch_size_given=True,
        shuffle=True,
        samples=len(dataset),
        collate_fn=collate_fn,
    )


#: The seed of the split form's loader as ``split_spec`` builds it: any fixed seed serves
#: (``sample_seeds=True`` needs one); 0 as in docs/device.md's example.
SPLIT_SEED = 0


def split_spec(spec: LoaderSpec, device: str) -> LoaderSpec | None:
    """The split form of the built-in workload's spec, over the same files, as tune measures it.

    The workers decode and crop to uint8 (``PillowCropTransform``, the float form's crop);
    the loader is seeded with ``sample_seeds=True`` (``SPLIT_SEED``), and ``make_loader``
    wraps it in ``wellfed.to_device(loader, device, transform=device_train_transform())``,
    so a trial's samples/s counts the main process's per-batch flip, conversion and
    normalisation on ``device`` (and the copy, on a CUDA device). Strip ``device`` with
    ``dataclasses.replace(split, device=None, device_transform=None)`` for the workers'
    half alone (what crosses from the workers).

    Args:
        spec: A LoaderSpec; only the built-in workload's float form has a split form.
        device: Where the device half runs: "cpu", "cuda", "cuda:1".

    Returns:
        The split form's LoaderSpec, or None when ``spec`` is not the built-in float form
        (``source`` "builtin", an ImageFolderDataset whose transform is
        ``PillowTrainTransform`` with the ImageNet mean and std): a user's dataset is not
        rewritten (the doctor's WF125 suggests the split for it).
    """
    dataset = spec.dataset
    float_form = getattr(dataset, "transform", None)
    if (
        spec.source != "builtin"
        or not isinstance(dataset, ImageFolderDataset)
        or not isinstance(float_form, PillowTrainTransform)
        or (tuple(float_form.mean), tuple(float_form.std)) != (IMAGENET_MEAN, IMAGENET_STD)
    ):
        return None
    split = copy.copy(dataset)  # the same files, labels and repeat; no folder scan
    split.transform = PillowCropTransform(float_form.size, float_form.scale, float_form.ratio)
    description = spec.description.replace(
        "RandomResizedCrop(224), flip, normalize",
        f"RandomResizedCrop(224) to uint8 in the workers; flip, normalize per batch on {device}",
    )
    return dataclasses.replace(
        spec,
        dataset=split,
        description=description,
        seed=SPLIT_SEED,
        sample_seeds=True,
        device=device,
        device_transform=device_train_transform(),
    )


def decode_spec(spec: LoaderSpec, device: str) -> LoaderSpec | None:
    """The decode form of the built-in workload's spec, over the same files, as tune measures it.

    The workers read each file's bytes (``ImageFolderDataset(..., encoded=True)``, collated
    by ``wellfed.device.collate_encoded``); the loader is seeded with ``sample_seeds=True``
    (``SPLIT_SEED``), and ``make_loader`` wraps it in ``wellfed.to_device(loader, device,
    transform=decode_train_transform(device))``: a trial's samples/s counts the decode
    (nvJPEG on a CUDA device where available), crop, flip and normalisation per batch in the
    main process. Strip ``device`` for the workers' half alone, as with ``split_spec``.

    Args:
        spec: A LoaderSpec; only the built-in workload's float form has a decode form.
        device: Where the device half runs: "cuda", "cuda:1" (or "cpu", for tests).

    Returns:
        The decode form's LoaderSpec, or None when ``spec`` is not the built-in float form
        (the same test as ``split_spec``).
    """
    from wellfed.device import collate_encoded

    split = split_spec(spec, device)
    if split is None:
        return None
    float_form = spec.dataset.transform
    encoded = copy.copy(spec.dataset)  # the same files, labels and repeat; no folder scan
    encoded.transform = None
    encoded.encoded = True
    description = spec.description.replace(
        "JPEG decode, RandomResizedCrop(224), flip, normalize",
        f"file bytes from the workers; JPEG decode, RandomResizedCrop(224), flip, normalize "
        f"per batch on {device}",
    )
    return dataclasses.replace(
        split,
        dataset=encoded,
        description=description,
        collate_fn=collate_encoded,
        device_transform=decode_train_transform(device, float_form.size),
    )
