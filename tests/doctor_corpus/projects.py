"""Hazards found by running the doctor on real projects' dataset code (issue 15), reduced to
the pattern with the projects' names and structure, and written down before their fix.

* eriklindernoren/PyTorch-YOLOv3 at 1d621c8: ``ListDataset.collate_fn`` (passed as
  ``collate_fn=dataset.collate_fn`` by ``train.py``'s ``_create_data_loader``) counts
  ``self.batch_count`` and picks a new ``self.img_size`` every tenth batch for multi-scale
  training. The collate function runs in the workers, so each worker counts its own batches and
  keeps its own size: with 8 workers the size changes every 80 batches, differently per worker,
  and the main process never sees it. The doctor said "clean" (fork, spawn, forkserver).
* NVlabs/stylegan2-ada-pytorch at d72cc7d: ``training/dataset.py``'s ``ImageFolderDataset``
  opens its zip in ``__init__`` (``self._get_zipfile().namelist()``) and keeps it; its
  ``__getstate__`` drops it for spawn, but forked workers inherit the open ``ZipFile`` and share
  one file offset. The doctor reported WF104 at ``dataset._zipfile`` (fork only), a true
  positive: 4 forked workers reading 512 KiB entries of such a zip raised ``BadZipFile`` within
  0.3 s here (the "Bad CRC-32 ... in DataLoader worker" reports: vocalpy/vak#402,
  JCruan519/VM-UNet#63, xnowbzhao/sapcu#12).
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from tests.doctor_corpus.cases import Case


class ListDataset(Dataset):
    """PyTorch-YOLOv3's ListDataset, reduced: samples are (path, image, targets)."""

    def __init__(self, list_path: str, img_size: int = 416, multiscale: bool = True) -> None:
        with open(list_path) as file:
            self.img_files = file.readlines()
        self.img_size = img_size
        self.multiscale = multiscale
        self.min_size = self.img_size - 3 * 32
        self.max_size = self.img_size + 3 * 32
        self.batch_count = 0

    def __getitem__(self, index: int) -> tuple[str, torch.Tensor, torch.Tensor]:
        img_path = self.img_files[index % len(self.img_files)].rstrip()
        return img_path, torch.zeros(3, 8, 8), torch.zeros(1, 6)

    def collate_fn(self, batch: list[Any]) -> tuple[Any, torch.Tensor, torch.Tensor]:
        self.batch_count += 1
        batch = [data for data in batch if data is not None]
        paths, imgs, bb_targets = list(zip(*batch, strict=True))
        # Selects new image size every tenth batch
        if self.multiscale and self.batch_count % 10 == 0:
            self.img_size = random.choice(range(self.min_size, self.max_size + 1, 32))
        imgs = torch.stack(
            [torch.nn.functional.interpolate(i[None], size=self.img_size)[0] for i in imgs]
        )
        return paths, imgs, torch.cat(bb_targets, 0)

    def __len__(self) -> int:
        return len(self.img_files)


class ImageFolderDataset(Dataset):
    """stylegan2-ada-pytorch's ImageFolderDataset, reduced: a zip opened lazily, but first in
    ``__init__``; ``__getstate__`` drops the handle (spawn is safe, fork is not)."""

    def __init__(self, path: str) -> None:
        self._path = path
        self._zipfile: Any = None
        self._all_fnames = set(self._get_zipfile().namelist())
        self._image_fnames = sorted(self._all_fnames)

    def _get_zipfile(self) -> Any:
        import zipfile

        if self._zipfile is None:
            self._zipfile = zipfile.ZipFile(self._path)
        return self._zipfile

    def close(self) -> None:
        try:
            if self._zipfile is not None:
                self._zipfile.close()
        finally:
            self._zipfile = None

    def __getstate__(self) -> dict[str, Any]:
        return dict(self.__dict__, _zipfile=None)

    def __len__(self) -> int:
        return len(self._image_fnames)

    def __getitem__(self, idx: int) -> bytes:
        with self._get_zipfile().open(self._image_fnames[idx], "r") as f:
            return f.read()


def _stylegan_zip(tmp: Path, closers: list[Any]) -> tuple[Any, Any]:
    import zipfile

    path = tmp / "ds.zip"
    with zipfile.ZipFile(path, "w") as z:
        for i in range(4):
            z.writestr(f"{i:08d}.png", bytes(64))
    dataset = ImageFolderDataset(str(path))
    closers.append(dataset.close)
    return dataset, {"num_workers": 3, "pin_memory": True, "prefetch_factor": 2}


def _yolo_loader(tmp: Path, closers: list[Any]) -> tuple[Any, Any]:
    listing = tmp / "train.txt"
    listing.write_text("".join(f"data/custom/images/{i}.jpg\n" for i in range(8)))
    dataset = ListDataset(str(listing), img_size=416, multiscale=True)
    loader = DataLoader(
        dataset,
        batch_size=4,
        shuffle=True,
        num_workers=2,
        pin_memory=True,
        collate_fn=dataset.collate_fn,
    )
    return loader, None


HAZARDS_PROJECTS: tuple[Case, ...] = (
    Case(
        "yolov3_multiscale_collate_mutates_dataset",
        _yolo_loader,
        (
            ("stale-worker-state", "dataset.batch_count"),
            ("stale-worker-state", "dataset.img_size"),
        ),
        "eriklindernoren/PyTorch-YOLOv3@1d621c8 pytorchyolo/utils/datasets.py ListDataset."
        "collate_fn, train.py _create_data_loader: the doctor said clean",
    ),
    Case(
        "stylegan2ada_zip_opened_in_init",
        _stylegan_zip,
        (("fork-shared-handle", "dataset._zipfile"),),
        "NVlabs/stylegan2-ada-pytorch@d72cc7d training/dataset.py ImageFolderDataset (found: "
        "a true positive, BadZipFile reproduced with 4 fork workers)",
        start_methods=("fork",),
    ),
)
