"""Unit tests of wellfed.cache: store layout, fingerprints, errors, reads (no workers)."""

from __future__ import annotations

import errno
import json
import os
import pickle
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

import wellfed
from tests.helpers_cache import (
    DictDataset,
    RaisingNet,
    RampDataset,
    RandomDataset,
    TinyNet,
    UnevenNet,
    double,
    ragged,
    raises_on_13,
    shape_changes_at_20,
    store_arrays,
    store_digest,
)
from wellfed.cache import CachedDataset, PrecomputeError, precompute
from wellfed.cache._store import LOCK_NAME, MANIFEST_NAME, release_store_lock, try_store_lock
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


@pytest.mark.parametrize("damage", [b'{"format": "wellfed-ca', b"\xff\xfe not utf-8", b"[1, 2, 3]"])
def test_corrupt_manifest_is_named_and_overwrite_recovers(tmp_path: Path, damage: bytes) -> None:
    # Issue 14: a truncated or replaced wellfed-cache.json gave a raw JSONDecodeError or
    # UnicodeDecodeError, and --overwrite could not recover the store.
    root = tmp_path / "s"
    build(root)
    (root / MANIFEST_NAME).write_bytes(damage)
    with pytest.raises(StateError) as exc:
        CachedDataset(root)
    assert exc.value.code == "WF412"
    assert "overwrite" in str(exc.value)
    with pytest.raises(StateError) as exc:
        build(root)
    assert exc.value.code == "WF412"
    ds = build(root, overwrite=True)
    assert len(ds) == 40
    assert CachedDataset(root)[3] is not None


def test_batchnorm_fn_and_0_dim_source_tensors_are_fingerprinted(tmp_path: Path) -> None:
    # Issue 14: hashing a 0-dim tensor (BatchNorm's num_batches_tracked, per-sample labels of
    # TensorDataset(x, torch.arange(n))) raised "self.dim() cannot be 0 to view Long as Byte".
    from torch.utils.data import TensorDataset

    from tests.helpers_cache import BatchNormNet
    from wellfed.cache._build import fn_fingerprint

    source = TensorDataset(torch.rand(12, 3, 4, 4), torch.arange(12))
    net = BatchNormNet()
    ds = build(tmp_path / "s", dataset=source, fn=net)
    assert len(ds) == 12
    before = fn_fingerprint(net, None)["params_sha256"]
    with torch.no_grad():
        net.conv.weight[0, 0, 0, 0] += 1.0  # one weight changed
    assert fn_fingerprint(net, None)["params_sha256"] != before
    with pytest.raises(StateError) as exc:
        build(tmp_path / "s", dataset=source, fn=net)
    assert exc.value.code == "WF401"


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
    real = _store.write_bytes
    writes = {"n": 0}

    def full_after_some(f, data):
        writes["n"] += 1
        if writes["n"] > 20:  # 8 writes a shard: fails inside the third
            raise OSError(errno.ENOSPC, "No space left on device", f.name)
        real(f, data)

    monkeypatch.setattr(_store, "write_bytes", full_after_some)
    with pytest.raises(PrecomputeError) as exc:
        build(tmp_path / "s")
    assert exc.value.code == "WF405"
    assert not list((tmp_path / "s").glob(".tmp-*"))
    assert sorted(p.name for p in (tmp_path / "s").glob("shard-*")) == [
        "shard-00000",
        "shard-00001",
    ]
    monkeypatch.setattr(_store, "write_bytes", real)
    build(tmp_path / "s")
    assert store_digest(tmp_path / "s") == store_digest(reference)


def test_fn_in_threads_gives_the_same_store(tmp_path: Path) -> None:
    """Batches that finish out of order still reach the store in index order."""
    build(tmp_path / "one", dataset=RampDataset(40), fn=UnevenNet(), fn_concurrency=1)
    build(tmp_path / "three", dataset=RampDataset(40), fn=UnevenNet(), fn_concurrency=3)
    build(tmp_path / "auto", dataset=RampDataset(40), fn=UnevenNet())  # a Module: threads
    assert store_digest(tmp_path / "three") == store_digest(tmp_path / "one")
    assert store_digest(tmp_path / "auto") == store_digest(tmp_path / "one")


def test_fn_raising_in_a_thread_names_the_samples_and_keeps_the_store(tmp_path: Path) -> None:
    with pytest.raises(PrecomputeError) as exc:
        build(tmp_path / "s", fn=RaisingNet(), fn_concurrency=3)
    assert exc.value.code == "WF403"
    assert exc.value.indices == [13]
    assert "samples 13" in str(exc.value)
    # Shards before the failing batch were committed; none after it, none half-written.
    committed = sorted(p.name for p in (tmp_path / "s").glob("shard-*"))
    assert committed == ["shard-00000"]
    assert not list((tmp_path / "s").glob(".tmp-*"))


def test_resolve_fn_concurrency() -> None:
    from wellfed.cache._precompute import resolve_fn_concurrency
    from wellfed.platform import usable_cpu_count

    cpus = usable_cpu_count()
    n, threads, _ = resolve_fn_concurrency("auto", TinyNet(), "cpu", 2)
    assert (n, threads) == ((cpus, 1) if cpus > 1 else (1, 1))
    n, threads, why = resolve_fn_concurrency("auto", double, "cpu", 0)
    assert (n, threads) == (1, None)
    assert "plain callable" in why
    assert resolve_fn_concurrency("auto", double, "cpu", 1)[:2] == (1, max(1, cpus - 1))
    assert resolve_fn_concurrency("auto", TinyNet(), "cuda:0", 2)[:2] == (1, None)
    assert resolve_fn_concurrency(4, double, "cpu", 2)[:2] == (4, max(1, cpus // 4))
    for bad in (0, -1, True, "2", 1.5):
        with pytest.raises(ConfigError) as exc:
            resolve_fn_concurrency(bad, double, "cpu", 0)
        assert exc.value.code == "WF010"


def test_streamed_shard_files_equal_numpy_save(tmp_path: Path) -> None:
    """A shard written in pieces holds exactly the bytes np.save writes for the whole array."""
    import io

    from wellfed.cache._store import FieldSpec, ShardBuilder

    x = np.arange(5 * 2 * 3, dtype=np.float32).reshape(5, 2, 3)
    specs = (FieldSpec("x", "float32", (2, 3), 2, "fn"),)
    builder = ShardBuilder(tmp_path, 0, 0, 5, specs)
    builder.append({"x": x[:2]})
    builder.append({"x": x[2:]})
    record = builder.commit()
    expected = io.BytesIO()
    np.save(expected, x)
    assert (tmp_path / "shard-00000" / "x.npy").read_bytes() == expected.getvalue()
    assert record["files"]["x.npy"]["bytes"] == len(expected.getvalue())
    short = ShardBuilder(tmp_path, 1, 5, 5, specs)
    short.append({"x": x[:2]})
    with pytest.raises(ValueError, match="2 rows appended, 5 expected"):
        short.commit()
    short.discard()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shard-00000"]


def test_bad_options(tmp_path: Path) -> None:
    for kw in (
        {"batch_size": 0},
        {"engine": "spark"},
        {"shard_bytes": "lots"},
        {"num_workers": -1},
        {"fn_concurrency": 0},
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


def _reshaped(key: str, value: object) -> Callable[[dict], dict]:
    def damage(manifest: dict) -> dict:
        manifest[key] = value
        return manifest

    return damage


@pytest.mark.parametrize(
    ("damage", "named"),
    [
        (lambda m: {}, '"format": "wellfed-cache"'),
        (_reshaped("status", "done"), "'status'"),
        (_reshaped("fields", 5), "'fields' is int"),
        (_reshaped("shards", [{"dir": "../etc"}]), "'shards'[0]['dir']"),
        (_reshaped("rows_per_shard", "8"), "'rows_per_shard'"),
        (_reshaped("layout", {"kind": "tuple", "fields": ["nope"]}), "'layout' names"),
        (lambda m: {**m, "shards": m["shards"][:-1]}, "'shards' lists 4 shards"),
    ],
)
def test_manifest_of_the_wrong_shape_is_named_and_overwrite_recovers(
    tmp_path: Path, damage: Callable[[dict], dict], named: str
) -> None:
    # Issue 14: valid JSON of the wrong shape gave KeyError or TypeError (exit 3 "unexpected").
    root = tmp_path / "s"
    build(root)
    digest = store_digest(root)
    file = root / MANIFEST_NAME
    file.write_text(json.dumps(damage(json.loads(file.read_text()))))
    with pytest.raises(StateError) as exc:
        CachedDataset(root)
    assert exc.value.code == "WF412"
    assert named in exc.value.problem
    with pytest.raises(StateError) as exc:
        build(root)
    assert exc.value.code == "WF412"
    build(root, overwrite=True)
    assert store_digest(root) == digest  # the rebuilt store is byte for byte the first


def test_damaged_shard_files_are_named_and_the_same_call_recomputes_them(tmp_path: Path) -> None:
    root = tmp_path / "s"
    build(root)
    digest = store_digest(root)
    cut = root / "shard-00001" / "output.npy"
    size = cut.stat().st_size  # 8 rows of float32 (3, 4, 4) and a 128-byte header: 1664
    cut.write_bytes(cut.read_bytes()[:100])
    shutil.rmtree(root / "shard-00003")
    with pytest.raises(StateError) as exc:
        CachedDataset(root)
    assert exc.value.code == "WF408"
    assert exc.value.value == [
        f"shard-00001/output.npy (100 bytes, recorded {size})",
        "shard-00003/output.npy (missing)",
        "shard-00003/source_1.npy (missing)",
    ]
    assert "Run the same precompute call again" in str(exc.value)
    build(root)  # the same call recomputes shards 1 and 3
    assert store_digest(root) == digest

    # The same size with another header: named when the shard is first read.
    other = root / "shard-00002" / "output.npy"
    np.save(other, np.zeros((8, 48), dtype=np.float32))
    assert other.stat().st_size == size
    ds = CachedDataset(root)
    with pytest.raises(StateError) as exc:
        ds[17]
    assert exc.value.code == "WF408"
    assert exc.value.value == [
        "shard-00002/output.npy (holds float32[8, 48], the store's schema says float32[8, 3, 4, 4])"
    ]


def test_second_writer_is_refused_and_a_complete_store_still_returned(tmp_path: Path) -> None:
    root = tmp_path / "s"
    root.mkdir()
    fd = try_store_lock(root)  # another open file of the lock: as a second process would be
    assert fd is not None
    try:
        with pytest.raises(StateError) as exc:
            build(root)
        assert exc.value.code == "WF413"
        assert exc.value.pid == os.getpid()
        assert "Store busy" in str(exc.value)
        assert list(root.iterdir()) == [root / LOCK_NAME]  # nothing written
        with pytest.raises(StateError, match=r"within 0 s"):
            build(root, wait_s=0.2)
    finally:
        release_store_lock(fd)
    ds = build(root)
    fd = try_store_lock(root)
    assert fd is not None
    try:
        assert len(build(root)) == len(ds)  # complete and this job's: read, never written
    finally:
        release_store_lock(fd)
    with pytest.raises(ConfigError):
        build(root, wait_s=-1)
