"""The built-in ImageFolder pipeline over real photos, and its handling of bad files."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest
import torch

from wellfed.errors import BadFileError, ConfigError, TargetError
from wellfed.workloads import PHOTOS_DIR, ImageFolderDataset, PillowTrainTransform, builtin_dataset


def test_builtin_dataset_yields_normalised_crops() -> None:
    ds = builtin_dataset()
    assert len(ds) == 320
    assert ds.classes == ["scenes", "textures"]
    image, label = ds[0]
    assert image.shape == (3, 224, 224)
    assert image.dtype == torch.float32
    assert label in (0, 1)
    assert -3.0 < float(image.mean()) < 3.0


def test_transform_follows_the_per_sample_seed_not_the_global_rng() -> None:
    """It draws from wellfed.sample_generator(): thread workers can share it reproducibly."""
    from wellfed.seeding import _enter_sample, _leave_sample

    ds = builtin_dataset()

    def load(seed: int) -> torch.Tensor:
        _enter_sample(seed, seed_globals=False)
        try:
            torch.manual_seed(seed + 100)  # the global RNG plays no part
            return ds[3][0]
        finally:
            _leave_sample()

    assert torch.equal(load(0), load(0))
    assert not torch.equal(load(0), load(1))


def test_crop_box_stays_inside_the_image() -> None:
    t = PillowTrainTransform()
    torch.manual_seed(0)
    for width, height in [(451, 300), (1411, 1411), (20, 2000)]:
        left, top, right, bottom = t.crop_box(width, height)
        assert 0 <= left < right <= width
        assert 0 <= top < bottom <= height


def _copy_photos(dest: Path) -> Path:
    shutil.copytree(PHOTOS_DIR, dest, ignore=shutil.ignore_patterns("*.md"))
    return dest


def test_non_image_endings_are_left_out(tmp_path: Path) -> None:
    root = _copy_photos(tmp_path / "photos")
    (root / "scenes" / "notes.txt").write_text("not an image")
    ds = ImageFolderDataset(root)
    assert len(ds) == 10
    assert [Path(p).name for p, _ in ds.skipped] == ["notes.txt"]


def test_unreadable_header_fails_with_path(tmp_path: Path) -> None:
    root = _copy_photos(tmp_path / "photos")
    bad = root / "scenes" / "broken.jpg"
    bad.write_text("<html>not found</html>")
    with pytest.raises(BadFileError) as info:
        ImageFolderDataset(root)
    assert info.value.path == str(bad)
    assert info.value.code == "WF020"


def test_unreadable_header_skipped_on_request(tmp_path: Path) -> None:
    root = _copy_photos(tmp_path / "photos")
    (root / "scenes" / "broken.jpg").write_bytes(b"")
    ds = ImageFolderDataset(root, on_bad_file="skip")
    assert len(ds) == 10
    assert any("broken.jpg" in p for p, _ in ds.skipped)


def test_truncated_pixels_fail_at_read_with_index(tmp_path: Path) -> None:
    root = _copy_photos(tmp_path / "photos")
    good = (root / "scenes" / "coffee.jpg").read_bytes()
    (root / "scenes" / "coffee.jpg").write_bytes(good[: len(good) // 3])
    ds = ImageFolderDataset(root)
    index = next(i for i, (p, _) in enumerate(ds.samples) if p.endswith("coffee.jpg"))
    with pytest.raises(BadFileError) as info:
        ds[index]
    assert info.value.index == index
    assert info.value.path.endswith("coffee.jpg")
    skipping = ImageFolderDataset(root, on_bad_file="skip")
    image, _ = skipping[index]
    assert image.size[0] > 0


def test_missing_and_empty_roots(tmp_path: Path) -> None:
    with pytest.raises(TargetError):
        ImageFolderDataset(tmp_path / "nope")
    (tmp_path / "empty" / "cls").mkdir(parents=True)
    with pytest.raises(TargetError) as info:
        ImageFolderDataset(tmp_path / "empty")
    assert info.value.code == "WF005"
    with pytest.raises(ConfigError):
        ImageFolderDataset(PHOTOS_DIR, on_bad_file="ignore")


def test_hymenoptera_gif_is_left_out(hymenoptera: Path) -> None:
    ds = ImageFolderDataset(hymenoptera / "train")
    names = [Path(p).name for p, _ in ds.skipped]
    assert names == ["imageNotFound.gif"]
    assert any(p.endswith("formica.jpeg") for p, _ in ds.samples)


def test_a_torchvision_that_fails_to_import_falls_back_to_pillow(tmp_path: Path) -> None:
    # Issue 15: a CUDA torchvision wheel beside CPU torch raises RuntimeError at import
    # ("operator torchvision::nms does not exist"); only ImportError fell back, so the built-in
    # workload crashed. A package that raises the same error at import stands in for it.
    import os
    import subprocess
    import sys

    pkg = tmp_path / "torchvision"
    pkg.mkdir()
    (pkg / "__init__.py").write_text(
        "raise RuntimeError('operator torchvision::nms does not exist')\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), *sys.path])}
    code = (
        "import logging; logging.basicConfig()\n"
        "from PIL import Image\n"
        "from wellfed.workloads import builtin_dataset, train_transform\n"
        "image, label = builtin_dataset()[0]\n"
        "t = train_transform(64)\n"
        "print(type(t).__name__, tuple(t(Image.new('RGB', (80, 90))).shape))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "PillowTrainTransform (3, 64, 64)"
    assert "torchvision is installed but fails to import (RuntimeError" in done.stderr
    assert "torchvision::nms does not exist" in done.stderr


def test_dangling_symlink_is_named_or_skipped_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Issue 14: a dangling symlink named .jpg was dropped silently, even with on_bad_file="fail".
    root = _copy_photos(tmp_path / "photos")
    link = root / "scenes" / "moved.jpg"
    link.symlink_to(tmp_path / "gone.jpg")
    with pytest.raises(BadFileError) as info:
        ImageFolderDataset(root)
    assert info.value.path == str(link)
    assert info.value.code == "WF020"
    assert f"is a dangling symlink: its target '{tmp_path / 'gone.jpg'}' does not exist" in str(
        info.value
    )
    with caplog.at_level(logging.WARNING, logger="wellfed.workloads.imagefolder"):
        ds = ImageFolderDataset(root, on_bad_file="skip")
    assert len(ds) == 10
    assert [p for p, _ in ds.skipped] == [str(link)]
    assert [r.getMessage() for r in caplog.records] == [
        f"ImageFolder {root}: left out 1 unreadable file(s) (on_bad_file='skip'): {link} "
        f"is a dangling symlink: its target '{tmp_path / 'gone.jpg'}' does not exist"
    ]


def test_symlink_loop_is_named_and_a_good_symlink_is_read(tmp_path: Path) -> None:
    root = _copy_photos(tmp_path / "photos")
    (root / "scenes" / "alias.jpg").symlink_to(root / "scenes" / "coffee.jpg")
    assert len(ImageFolderDataset(root)) == 11
    loop = root / "textures" / "loop.jpg"
    loop.symlink_to("loop.jpg")
    with pytest.raises(BadFileError, match="that cannot be followed") as info:
        ImageFolderDataset(root)
    assert info.value.path == str(loop)


def test_empty_class_folder_fails_as_in_torchvision_or_keeps_its_label_under_skip(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # torchvision's ImageFolder raises FileNotFoundError("Found no valid file for the classes
    # ...") for a class folder without an image; allow_empty=True keeps its class index.
    root = _copy_photos(tmp_path / "photos")
    (root / "a_empty").mkdir()
    (root / "a_empty" / "notes.txt").write_text("no image here")
    with pytest.raises(TargetError) as info:
        ImageFolderDataset(root)
    assert info.value.code == "WF021"
    assert info.value.value == [str(root / "a_empty")]
    assert f"Empty class folder: {root / 'a_empty'} (label 0)" in str(info.value)
    with caplog.at_level(logging.WARNING, logger="wellfed.workloads.imagefolder"):
        ds = ImageFolderDataset(root, on_bad_file="skip")
    assert ds.classes == ["a_empty", "scenes", "textures"]
    assert sorted({label for _, label in ds.samples}) == [1, 2]  # labels unchanged by skip
    assert "1 class folder(s) hold no readable image" in caplog.text


def test_bad_file_error_rebuilt_by_pytorch_keeps_its_code() -> None:
    # torch re-raises a worker's exception as type(exc)(message): the code must survive.
    from torch._utils import ExceptionWrapper

    try:
        raise BadFileError("Unreadable image: x.jpg failed to decode.", path="x.jpg", index=3)
    except BadFileError:
        wrapped = ExceptionWrapper(where="in DataLoader worker process 0")
    with pytest.raises(BadFileError) as info:
        wrapped.reraise()
    assert info.value.code == "WF020"
    assert str(info.value).startswith("Caught BadFileError in DataLoader worker process 0.")
