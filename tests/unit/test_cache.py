"""Unit tests of wellfed.cache: store layout, fingerprints, errors, reads (no workers)."""

from __future__ import annotations

import errno
import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

import wellfed
from tests.helpers_cache import (
    DictDataset,
    RampDataset,
    RandomDataset,
    TinyNet,
    double,
    ragged,
    raises_on_13,
    shape_changes_at_20,
    store_arrays,
    store_digest,
)
from wellfed.cache import CachedDataset, PrecomputeError, precompute
from wellfed.errors import ConfigError, StateError

SMALL_SHARDS = 8 * (3 * 4 * 4 * 4 + 8)  # two batches of 4 samples (output + label) per shard


def build(path: Path, dataset=None, fn=double, **kw):
    kw.setdefault("batch_size", 4)
    kw.setdefault("num_workers", 0)
    kw.setdefault("device", "cpu")
    kw.setdefault("shard_bytes", SMALL_SHARDS)
    return precompute(dataset if dataset is not None else RampDataset(40), fn, path, **kw)


def test_roundtrip_tuple_source_keeps_labels(tmp_path: Path) -> None:
    ds = build(tmp_path / "s")
    assert len(ds) == 40
    x, y = ds[13]
    assert torch.equal(x, torch.full((3, 4, 4), 27.0))
    assert int(y) == 13
    assert x.flags_writeable if hasattr(x, "flags_writeable") else True
    batch = ds.__getitems__([39, 0, 13])
    assert [int(s[1]) for s in batch] == [39, 0, 13]
    assert torch.equal(batch[2][0], x)
    assert [f.name for f in ds.fields] == ["output", "source_1"]
    ds.verify()


def test_store_is_plain_numpy_and_json(tmp_path: Path) -> None:
    build(tmp_path / "s")
    manifest = json.loads((tmp_path / "s" / "wellfed-cache.json").read_text())
    assert manifest["status"] == "complete"
    assert manifest["rows_per_shard"] == 8
    assert len(manifest["shards"]) == 5
    shard = manifest["shards"][1]
    x = np.load(tmp_path / "s" / shard["dir"] / "output.npy", mmap_mode="r", allow_pickle=False)
    assert x.shape == (8, 3, 4, 4)
    assert x.dtype == np.float32
    assert x[0, 0, 0, 0] == 2 * 8 + 1


def test_dataloader_reads_match(tmp_path: Path) -> None:
    ds = build(tmp_path / "s")
    loader = torch.utils.data.DataLoader(ds, batch_size=16, shuffle=False)
    xs, ys = zip(*loader, strict=False)
    assert torch.equal(torch.cat(ys), torch.arange(40))
    assert torch.equal(torch.cat(xs)[:, 0, 0, 0], torch.arange(40).float() * 2 + 1)


def test_pickle_is_tiny_and_reopens(tmp_path: Path) -> None:
    ds = build(tmp_path / "s")
    ds[0]  # open some maps; they must not travel
    blob = pickle.dumps(ds)
    assert len(blob) < 600
    clone = pickle.loads(blob)
    assert torch.equal(clone[5][0], ds[5][0])


def test_complete_store_is_reused_and_resume_is_identical(tmp_path: Path) -> None:
    a = tmp_path / "a"
    build(a)
    digest = store_digest(a)
    calls = []
    build(a, progress=lambda done, total: calls.append((done, total)))
    assert calls == [(40, 40)]
    assert store_digest(a) == digest
    # Remove two committed shards and mark the store as building: the same call recomputes them.
    manifest = json.loads((a / "wellfed-cache.json").read_text())
    for shard in ("shard-00001", "shard-00003"):
        for f in (a / shard).iterdir():
            f.unlink()
        (a / shard).rmdir()
    manifest["status"], manifest["shards"] = "building", []
    (a / "wellfed-cache.json").write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    with pytest.raises(StateError) as exc:
        CachedDataset(a)
    assert exc.value.code == "WF406"
    build(a)
    assert store_digest(a) == digest


def test_other_fingerprint_is_refused_then_overwritten(tmp_path: Path) -> None:
    build(tmp_path / "s")
    with pytest.raises(StateError) as exc:
        build(tmp_path / "s", batch_size=8)
    assert exc.value.code == "WF401"
    assert "options.batch_size" in exc.value.value
    with pytest.raises(StateError) as exc:
        build(tmp_path / "s", fn_version="2")
    assert "fn.version" in exc.value.value
    ds = build(tmp_path / "s", batch_size=8, overwrite=True)
    assert ds.manifest["fingerprint"]["options"]["batch_size"] == 8


def test_module_fingerprint_hashes_parameters(tmp_path: Path) -> None:
    net = TinyNet()
    ds = build(tmp_path / "s", fn=net)
    with torch.no_grad():
        expected = net(torch.full((1, 3, 4, 4), 7.0))[0]
    assert torch.allclose(ds[7][0], expected)
    assert not net.training
    with torch.no_grad():
        net.conv.bias.add_(1.0)
    with pytest.raises(StateError) as exc:
        build(tmp_path / "s", fn=net)
    assert exc.value.value == ["fn.params_sha256"]


def test_refuses_foreign_directory(tmp_path: Path) -> None:
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError) as exc:
        build(tmp_path / "s", overwrite=True)
    assert exc.value.code == "WF402"
    assert (tmp_path / "s" / "notes.txt").exists()


def test_random_source_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as exc:
        build(tmp_path / "s", dataset=RandomDataset(8))
    assert exc.value.code == "WF402"


def test_inconsistent_shapes_name_the_samples(tmp_path: Path) -> None:
    with pytest.raises(PrecomputeError) as exc:
        build(tmp_path / "s", fn=shape_changes_at_20, shard_bytes=1)
    assert exc.value.code == "WF404"
    assert exc.value.indices == [20, 21, 22, 23]
    assert "20-23" in str(exc.value)
    # The shards before the failure are committed; the store is resumable, not complete.
    assert (tmp_path / "s" / "shard-00000").is_dir()
    with pytest.raises(StateError):
        CachedDataset(tmp_path / "s")


def test_fn_raising_names_the_sample(tmp_path: Path) -> None:
    with pytest.raises(PrecomputeError) as exc:
        build(tmp_path / "s", fn=raises_on_13)
    assert exc.value.code == "WF403"
    assert exc.value.indices == [13]
    assert isinstance(exc.value.__cause__, ValueError)


def test_variable_shape_field(tmp_path: Path) -> None:
    ds = build(tmp_path / "s", fn=ragged)
    spec = ds.fields[0]
    assert spec.variable
    assert spec.ndim == 1
    for i in (0, 4, 7, 39):
        x, _y = ds[i]
        assert x.shape == (i % 5 + 1,)
        assert torch.equal(x, torch.arange(i % 5 + 1, dtype=torch.float32) * i)
    got = ds.__getitems__([7, 39])
    assert got[0][0].shape == (3,)
    assert int(got[1][1]) == 39


def test_dict_source_with_input_key(tmp_path: Path) -> None:
    ds = build(tmp_path / "s", dataset=DictDataset(12), input="image")
    sample = ds[3]
    assert set(sample) == {"image", "label"}
    assert torch.equal(sample["image"], torch.full((3, 4, 4), 7.0))
    assert int(sample["label"]) == 3
    only = CachedDataset(tmp_path / "s", fields="label")
    assert set(only[3]) == {"label"}


def test_keep_source_false_and_whole_batch(tmp_path: Path) -> None:
    ds = build(
        tmp_path / "s", dataset=DictDataset(8), fn=lambda b: {"y": b["image"].sum(dim=(1, 2, 3))}
    )
    assert set(ds[2]) == {"y"}
    assert float(ds[2]["y"]) == 2 * 48


def test_disk_full_injected_keeps_store_resumable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ENOSPC injected through the store's write hook (the tmpfs variant is in integration)."""
    from wellfed.cache import _store

    reference = tmp_path / "ref"
    build(reference)
    real = _store.write_file
    writes = {"n": 0}

    def full_after_some(path, header, data):
        writes["n"] += 1
        if writes["n"] > 7:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        real(path, header, data)

    monkeypatch.setattr(_store, "write_file", full_after_some)
    with pytest.raises(PrecomputeError) as exc:
        build(tmp_path / "s")
    assert exc.value.code == "WF405"
    assert not list((tmp_path / "s").glob(".tmp-*"))
    monkeypatch.setattr(_store, "write_file", real)
    build(tmp_path / "s")
    assert store_digest(tmp_path / "s") == store_digest(reference)


def test_bad_options(tmp_path: Path) -> None:
    for kw in (
        {"batch_size": 0},
        {"engine": "spark"},
        {"shard_bytes": "lots"},
        {"num_workers": -1},
    ):
        with pytest.raises(ConfigError) as exc:
            build(tmp_path / "s", **kw)
        assert exc.value.code == "WF010"
    with pytest.raises(StateError) as exc2:
        CachedDataset(tmp_path / "nowhere")
    assert exc2.value.code == "WF406"


def test_corruption_is_detected(tmp_path: Path) -> None:
    ds = build(tmp_path / "s")
    f = tmp_path / "s" / "shard-00002" / "output.npy"
    raw = bytearray(f.read_bytes())
    raw[-1] ^= 0xFF
    f.write_bytes(bytes(raw))
    with pytest.raises(StateError) as exc:
        ds.verify()
    assert exc.value.code == "WF408"


def test_public_names() -> None:
    assert wellfed.precompute is precompute
    assert wellfed.CachedDataset is CachedDataset


def test_doctor_finds_cached_dataset_clean(tmp_path: Path) -> None:
    ds = build(tmp_path / "s")
    ds[0]
    report = wellfed.diagnose(ds, live=False)
    assert not report.has_errors, report
    assert store_arrays(tmp_path / "s")["output.npy"].shape == (40, 3, 4, 4)
