"""Unit tests of what the doctor recognises in objects: Python objects a container holds
(WF109), handles held inside objects judged whole (WF104), RNGs and caches held by classes
(WF107, WF110), lambdas written mid-line (WF108). No subprocesses; real files, real numpy,
PIL, lmdb and pandas objects.
"""

from __future__ import annotations

import functools
import io
import sys
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
from PIL import Image
from torch.utils.data import Dataset

from tests.doctor_corpus import datasets as d
from wellfed.doctor import DoctorReport, diagnose
from wellfed.doctor._checks_memory import (
    COPY_ON_READ_ITEMS,
    estimate_objects,
    unbounded_lru_cache,
)
from wellfed.doctor._classify import code_names, handle_kind, lambda_node
from wellfed.doctor._source import seed_calls
from wellfed.platform import collect_platform_info

_PLATFORM = collect_platform_info(include_gpus=False)


@pytest.fixture(autouse=True)
def _strict_checks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WELLFED_DOCTOR_STRICT", "1")


def _static(obj: Any, **kwargs: Any) -> DoctorReport:
    kwargs.setdefault("platform_info", _PLATFORM)
    return diagnose(obj, live=False, **kwargs)


def _pairs(report: DoctorReport) -> set[tuple[str, str]]:
    return {(f.code, f.path) for f in report.findings if f.severity in ("error", "warning")}


# --- WF109: objects held, not items ---------------------------------------------------------


def test_a_list_of_dicts_counts_each_dict_and_its_values() -> None:
    infos = [
        {"token": f"{i:032x}", "ts": 10**12 + i, "cams": {"path": f"{i}.jpg"}}
        for i in range(50_000)
    ]
    n = estimate_objects(infos)
    # per item: the dict, token, ts, the inner dict and its path (keys are shared literals)
    assert 0.8 * 5 * 50_000 <= n <= 1.2 * 5 * 50_000


def test_small_ints_and_one_char_strings_are_shared_not_held() -> None:
    assert estimate_objects([i % 100 for i in range(200_000)]) < 200
    assert estimate_objects(["a", "b"] * 100_000) < 10


def test_objects_shared_by_the_sampled_items_count_once() -> None:
    names = [f"class_{c}" for c in range(80)]
    records = [(names[i % 80], i % 7) for i in range(100_000)]
    n = estimate_objects(records)
    # each tuple is its own object; the 80 names are shared by many records
    assert 100_000 <= n <= 100_000 + 2 * 80 * (100_000 / 24)


def test_numpy_object_arrays_count_their_items() -> None:
    arr = np.empty(120_000, dtype=object)
    arr[:] = [f"p{i}" for i in range(120_000)]
    assert estimate_objects(arr) >= 120_000
    assert estimate_objects(np.zeros(10**6)) == 1


def test_pandas_counts_rows_times_object_columns() -> None:
    pd = pytest.importorskip("pandas")
    rows = 1000
    df = pd.DataFrame(
        {
            "obj": pd.Series([[i] for i in range(rows)], dtype=object),
            "x": np.arange(rows, dtype=np.float32),
            "y": np.arange(rows),
        }
    )
    assert estimate_objects(df) == 1 + rows
    assert estimate_objects(df[["x", "y"]]) == 1


def test_counting_never_imports_pandas(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delitem(sys.modules, "pandas", raising=False)
    estimate_objects([{"a": [i]} for i in range(100)])
    assert "pandas" not in sys.modules


def test_wf109_is_reported_at_the_deepest_container_that_reaches_it() -> None:
    half = COPY_ON_READ_ITEMS
    ds = d.AttrDataset(
        ann={"images": [f"img_{i}.jpg" for i in range(half)], "ids": list(range(1000, 1000 + half))}
    )
    pairs = _pairs(_static(ds))
    assert pairs == {("WF109", "dataset.ann['images']"), ("WF109", "dataset.ann['ids']")}


def test_wf109_reports_many_small_containers_at_their_parent() -> None:
    parts = {f"split{i}": [f"{i}/{j}.jpg" for j in range(30_000)] for i in range(4)}
    assert _pairs(_static(d.AttrDataset(parts=parts))) == {("WF109", "dataset.parts")}


# --- WF104: handles held inside objects the walk judges whole ------------------------------


def test_npz_file_is_an_open_handle_until_closed(tmp_path: Path) -> None:
    np.savez(tmp_path / "a.npz", x=np.arange(3))
    z = np.load(tmp_path / "a.npz")
    assert handle_kind(z) == ("numpy NpzFile (np.load of an .npz)", True)
    z.close()
    assert handle_kind(z) == ("numpy NpzFile (np.load of an .npz)", False)
    assert handle_kind(dict(np.load(tmp_path / "a.npz"))) is None


def test_pil_image_is_open_until_loaded_and_in_memory_streams_are_not_handles(
    tmp_path: Path,
) -> None:
    Image.new("RGB", (4, 4)).save(tmp_path / "a.png")
    img = Image.open(tmp_path / "a.png")
    assert handle_kind(img) == ("PIL image (Image.open, not yet loaded)", True)
    img.load()
    assert handle_kind(img)[1] is False  # type: ignore[index]
    in_memory = Image.open(io.BytesIO((tmp_path / "a.png").read_bytes()))
    assert handle_kind(in_memory)[1] is False  # type: ignore[index]
    assert handle_kind(io.BytesIO(b"x")) is None


def test_real_lmdb_environment_is_a_handle_until_closed(tmp_path: Path) -> None:
    lmdb = pytest.importorskip("lmdb")
    env = lmdb.open(str(tmp_path / "db"), map_size=1 << 20)
    assert handle_kind(env) == ("LMDB environment", True)
    env.close()
    assert handle_kind(env) == ("LMDB environment", False)


class _Reader:
    """A library-style reader with its own __reduce__ (the walk judges it whole)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.fh = open(path, "rb")  # noqa: SIM115  # closed by the test

    def __reduce__(self) -> tuple[Any, ...]:
        return (_Reader, (self.path,))


def test_an_object_judged_whole_that_holds_an_open_file_is_reported(tmp_path: Path) -> None:
    (tmp_path / "f.bin").write_bytes(b"abc")
    reader = _Reader(str(tmp_path / "f.bin"))
    try:
        report = _static(d.AttrDataset(reader=reader), start_methods=["fork"])
    finally:
        reader.fh.close()
    (f,) = [f for f in report.findings if f.code == "WF104"]
    assert f.path == "dataset.reader"
    assert "holds an open file (open) in .fh" in f.evidence


def test_open_siblings_in_one_container_are_one_finding(tmp_path: Path) -> None:
    names = []
    for i in range(3):
        Image.new("RGB", (4, 4)).save(tmp_path / f"{i}.png")
        names.append(tmp_path / f"{i}.png")
    images = [Image.open(p) for p in names]
    try:
        report = _static(d.AttrDataset(images=images), start_methods=["fork"])
    finally:
        for img in images:
            img.close()
    (f,) = [f for f in report.findings if f.code == "WF104"]
    assert f.path == "dataset.images[0]"
    assert "2 more items of dataset.images are open too" in f.message


# --- WF107 / WF110: what a class holds -----------------------------------------------------


class _Augment:
    rng: ClassVar[np.random.Generator] = np.random.default_rng(0)
    MEAN: ClassVar[np.ndarray] = np.zeros(3)

    def __call__(self, x: float) -> float:
        return x + float(self.rng.random())


class _OwnRngAugment(_Augment):
    def __init__(self) -> None:
        self.rng = np.random.default_rng(1)  # shadows the class attribute


class _AugDataset(Dataset):
    def __init__(self, transform: Any) -> None:
        self.transform = transform

    def __len__(self) -> int:
        return 4

    def __getitem__(self, i: int) -> float:
        return float(self.transform(float(i)))


def test_rng_held_by_the_class_is_reported_at_type_path() -> None:
    pairs = _pairs(_static(_AugDataset(_Augment()), start_methods=["fork"]))
    assert ("WF107", "type(dataset.transform).rng") in pairs


def test_rng_shadowed_by_the_instance_is_reported_at_the_instance_only() -> None:
    pairs = _pairs(_static(_AugDataset(_OwnRngAugment()), start_methods=["fork"]))
    assert ("WF107", "dataset.transform.rng") in pairs
    assert not any(p.startswith("type(") for _, p in pairs)


# MONAI's worker_init_fn and set_rnd as monai/data/utils.py has them (Project-MONAI/MONAI at
# d388d1c6fec8cb3a0eebee5b5a0b9776ca59ca83, lines 702-734, Apache-2.0), with a reduced
# monai.transforms.Randomizable (class-level R until set_random_state), written to a
# site-packages folder: the doctor reads them as an installed package's, not user code.
_INSTALLED_MONAI = """
import numpy as np
import torch

MAX_SEED = np.iinfo(np.uint32).max + 1


class Randomizable:
    R = np.random.RandomState()

    def set_random_state(self, seed=None, state=None):
        self.R = np.random.RandomState(seed)
        return self


class RandFlip(Randomizable):
    def __call__(self, x):
        return -x if self.R.rand() < 0.5 else x


class Dataset(torch.utils.data.Dataset):
    def __init__(self, data, transform):
        self.data = data
        self.transform = transform

    def __len__(self):
        return len(self.data)

    def __getitem__(self, index):
        return self.transform(self.data[index])


def worker_init_fn(worker_id: int) -> None:
    worker_info = torch.utils.data.get_worker_info()
    set_rnd(worker_info.dataset, seed=worker_info.seed)  # type: ignore[union-attr]


def set_rnd(obj, seed: int) -> int:
    if isinstance(obj, (tuple, list)):  # ZipDataset.data is a list
        _seed = seed
        for item in obj:
            _seed = set_rnd(item, seed=seed)
        return seed if _seed == seed else seed + 1
    if not hasattr(obj, "__dict__"):
        return seed  # no attribute
    if hasattr(obj, "set_random_state"):
        obj.set_random_state(seed=seed % MAX_SEED)
        return seed + 1  # a different seed for the next component
    for key in obj.__dict__:
        if key.startswith("__"):  # skip the private methods
            continue
        seed = set_rnd(obj.__dict__[key], seed=seed)
    return seed
"""


@pytest.fixture
def installed_monai(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    import importlib

    site = tmp_path / "site-packages"
    site.mkdir()
    (site / "wf_installed_monai.py").write_text(_INSTALLED_MONAI)
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.delitem(sys.modules, "wf_installed_monai", raising=False)
    module = importlib.import_module("wf_installed_monai")
    yield module
    sys.modules.pop("wf_installed_monai", None)


def _wf107(report: DoctorReport) -> set[str]:
    return {f.path for f in report.findings if f.code == "WF107"}


def test_monai_worker_init_fn_reseeds_installed_randomizables(installed_monai: Any) -> None:
    m = installed_monai
    class_level = m.Dataset(np.arange(8.0), m.RandFlip())
    instance_level = m.Dataset(np.arange(8.0), m.RandFlip().set_random_state(0))
    for ds in (class_level, instance_level):
        bare = _static(ds, loader_kwargs={"num_workers": 2}, start_methods=["fork"])
        assert _wf107(bare)  # no worker_init_fn: every worker has the same R
        kwargs = {"num_workers": 2, "worker_init_fn": m.worker_init_fn}
        assert not _wf107(_static(ds, loader_kwargs=kwargs, start_methods=["fork"]))


def _reseed_transform(info: Any) -> None:
    info.dataset.transform.set_random_state(info.seed % 2**32)


def _wif_through_a_helper(worker_id: int) -> None:
    _reseed_transform(torch_worker_info())


def torch_worker_info() -> Any:
    from torch.utils.data import get_worker_info

    return get_worker_info()


def test_set_random_state_one_call_down_reseeds(installed_monai: Any) -> None:
    ds = installed_monai.Dataset(np.arange(8.0), installed_monai.RandFlip())
    kwargs = {"num_workers": 2, "worker_init_fn": _wif_through_a_helper}
    assert not _wf107(_static(ds, loader_kwargs=kwargs, start_methods=["fork"]))
    kwargs = {"num_workers": 2, "worker_init_fn": torch_worker_info}  # reseeds nothing
    assert _wf107(_static(ds, loader_kwargs=kwargs, start_methods=["fork"]))


class _MethodCacheDataset(Dataset):
    def __len__(self) -> int:
        return 4

    @functools.cache  # noqa: B019  # the hazard under test (an unbounded lru_cache)
    def _load(self, i: int) -> float:
        return float(i)

    def __getitem__(self, i: int) -> float:
        return self._load(i)


def test_unbounded_lru_cache_on_a_method_is_wf110_at_type_path() -> None:
    assert ("WF110", "type(dataset)._load") in _pairs(_static(_MethodCacheDataset()))


class _SelfOnlyCacheDataset(Dataset):
    def __len__(self) -> int:
        return 4

    @functools.cache  # noqa: B019  # one entry per instance: bounded
    def _table(self) -> list[float]:
        return [0.0, 1.0, 2.0, 3.0]

    def __getitem__(self, i: int) -> float:
        return self._table()[i]


def test_lru_cache_on_a_method_taking_only_self_is_bounded() -> None:
    assert not any(c == "WF110" for c, _ in _pairs(_static(_SelfOnlyCacheDataset())))
    assert unbounded_lru_cache(vars(_SelfOnlyCacheDataset)["_table"], method=True) is None
    name = unbounded_lru_cache(vars(_MethodCacheDataset)["_load"], method=True)
    assert name == "_MethodCacheDataset._load"


class _DuckCache:
    """Not functools' wrapper, but its public API: recognised by cache_info/cache_parameters."""

    def __init__(self, func: Any) -> None:
        self.__wrapped__ = func

    def cache_info(self) -> tuple[int, int, None, int]:
        return (0, 0, None, 0)

    def cache_parameters(self) -> dict[str, Any]:
        return {"maxsize": None, "typed": False}


def test_lru_cache_is_recognised_by_its_public_api() -> None:
    def load(i: int) -> int:
        return i

    assert unbounded_lru_cache(_DuckCache(load)) is not None


def test_lru_cache_bounds() -> None:
    name = unbounded_lru_cache(functools.lru_cache(maxsize=None)(lambda i: i))
    assert name is not None
    assert name.endswith("<lambda>")
    assert unbounded_lru_cache(functools.lru_cache(maxsize=8)(lambda i: i)) is None
    assert unbounded_lru_cache(functools.cache(lambda: 1)) is None  # one entry at most
    assert unbounded_lru_cache(len) is None


# --- WF108: lambdas written mid-line -------------------------------------------------------


def test_lambda_in_a_dict_literal_is_found_and_judged() -> None:
    kwargs = {"num_workers": 2, "worker_init_fn": lambda wid: np.random.seed(wid)}
    node = lambda_node(kwargs["worker_init_fn"])
    assert node is not None
    assert [a.arg for a in node.args.args] == ["wid"]
    report = _static(d.AttrDataset(x=1), loader_kwargs=kwargs, start_methods=["fork"])
    (f,) = [f for f in report.findings if f.code == "WF108"]
    assert f.severity == "warning"


def test_seed_calls_itself_reads_a_lambda_written_mid_line() -> None:
    # the lambda's own source line (``num_workers=2, worker_init_fn=lambda ...)``) does
    # not parse alone: it is found in its parsed file
    kwargs = dict(
        num_workers=2, worker_init_fn=lambda wid: np.random.seed(wid + 1))  # fmt: skip
    line = sys._getframe().f_lineno - 1
    (call,) = seed_calls(kwargs["worker_init_fn"])
    assert (call.call, call.line, call.depends_on) == ("np.random.seed", line, "arguments")
    consts = dict(
        f=lambda wid: np.random.seed(7))  # fmt: skip
    assert [c.depends_on for c in seed_calls(consts["f"])] == ["constant"]


def test_code_names_leave_out_strings_and_comments() -> None:
    src = 'def f(w):\n    """Reseeds R."""\n    np.random.seed(w)  # not self.rng\n'
    names = code_names(src)
    assert "R" not in names
    assert "rng" not in names
    assert {"np", "random", "seed", "w"} <= names


# --- WF125 live: which float tensors are images, and their bytes per sample ----------------


def test_float_images_are_named_by_their_place_not_their_shape() -> None:
    import torch

    from wellfed.doctor._probe import float_images

    chw = torch.zeros(1, 3, 32, 32)
    assert [i["path"] for i in float_images({"image": chw, "mask": chw})] == ["batch['image']"]
    for key in ("mask", "seg_masks", "normals", "surfaceNormals", "label", "depth_map", "target"):
        assert float_images({key: chw}) == [], key
    assert float_images({"features": chw}) == []  # a key naming nothing
    assert [i["path"] for i in float_images((chw, chw))] == ["batch[0]"]  # (img, label)
    assert [i["path"] for i in float_images({"normalized_img": chw})] == ["batch['normalized_img']"]
    assert float_images(chw)[0]["path"] == "batch"


def test_float_image_bytes_per_sample_count_every_dim_but_the_batch() -> None:
    import torch

    from wellfed.doctor._probe import float_images

    (video,) = float_images({"frames": torch.zeros(1, 8, 3, 16, 16)})  # (B, T, C, H, W)
    assert video["sample_values"] == 8 * 3 * 16 * 16
    (item,) = float_images(torch.zeros(3, 16, 16), "sample", batched=False)
    assert item["sample_values"] == 3 * 16 * 16
