"""The uint8 split: bytes per sample from the workers, and samples/s, float32 vs uint8 + device.

Workload: wellfed's built-in ImageFolder pipeline over ``../shared/data/hymenoptera_data/train``
(244 photos; the 10 shipped photos x 32 when that folder is absent), batch size 32, in three
forms at the same worker count, start method and settings:

* ``plain``: a plain ``torch.utils.data.DataLoader`` of the float form (the baseline);
* ``float``: the standard pipeline in the workers (``builtin_dataset()``: JPEG decode,
  RandomResizedCrop(224), flip, to float32, normalise), each batch through
  ``wellfed.to_device`` without a transform;
* ``uint8``: the split form (``builtin_dataset(output="uint8")``): the workers decode and
  crop to uint8 (3, 224, 224); ``to_device(..., transform=device_train_transform())`` flips,
  converts and normalises per batch on ``--device`` (``sample_seeds=True``: each sample's flip
  from its seed).

Bytes per sample crossing from the workers: the tensors of one real batch of each form,
``nbytes`` summed (``wellfed.device.batch_nbytes``, as ``wellfed tune`` counts them), over the
batch size (float32 3 x 224 x 224 x 4 = 602,112 B; uint8 150,528 B;
plus the int64 label). Throughput: ``--repeats`` rounds, the forms interleaved (the order
rotates each round, so load drift on a shared machine hits all alike); per round a fresh loader
(workers started), ``--warmup-batches`` not counted, then ``--batches`` timed batches through
``wellfed.measure.iterate`` (the one loader driver). The warm-up defaults to the batches that
are loaded ahead while the first one loads (``num_workers x prefetch_factor`` in the workers'
queue, plus ``to_device``'s look-ahead of 2): timed from there, each form runs at its steady
rate, not off a queue filled before the clock started (6 timed batches after 1 warm-up read
half of them from the queue: figures above the CPU ceiling). The dataset is repeated
(``--tile``, by default as often as one round needs) so that one epoch holds the warm-up, 24
timed batches and the look-ahead past the last of them, all full. Reported per form: samples/s
median and p90 over rounds, per-batch ms median and p90 pooled; and the split's ratio to the
float form within each round (``uint8_over_float_paired_p50``). With ``--device cuda``: pinned
memory on, ``torch.cuda.synchronize()`` before each clock read.

``--crop`` adds the device RandomResizedCrop methods, a batch of 32 (3, 256, 256) float images
to 224 on ``--device``: per-sample ``F.interpolate`` with and without antialias, the batched
``F.grid_sample`` (``antialias=False``), and kornia's ``crop_and_resize`` when kornia imports.

Run:
    python benchmarks/device_split.py                  # ~1 min on 2 CPUs
    python benchmarks/device_split.py --smoke          # < 30 s
    python benchmarks/device_split.py --device cuda --crop
Writes one JSON line to benchmarks/results/device_split.jsonl (``--out`` to change).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root: benchmarks._env
from benchmarks._env import git_sha
from wellfed.device import batch_nbytes
from wellfed.measure import iterate

RESULTS = Path(__file__).resolve().parent / "results"
HYMENOPTERA_TRAIN = (
    Path(__file__).resolve().parents[2] / "shared" / "data" / "hymenoptera_data" / "train"
)
FORMS = ("plain", "float", "uint8")


def _p90(values: Sequence[float]) -> float:
    ordered = sorted(values)
    k = 0.9 * (len(ordered) - 1)
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _time(batches: Any, warmup: int, timed: int, device: str) -> tuple[list[float], int]:
    """Per-batch seconds of the ``timed`` batches after ``warmup``, and the samples they held."""
    times: list[float] = []
    samples = 0
    t = time.perf_counter()
    for i, batch in enumerate(iterate(batches, max_batches=warmup + timed)):
        _sync(device)
        now = time.perf_counter()
        if i >= warmup:
            times.append(now - t)
            samples += int(batch[0].shape[0])
        t = now
    return times, samples


def _crop_methods(device: str, repeats: int) -> dict[str, Any]:
    """ms per batch of 32 (3, 256, 256) -> 224 for each RandomResizedCrop method."""
    import torch

    from wellfed.device import RandomResizedCrop

    g = torch.Generator().manual_seed(0)
    images = torch.rand(32, 3, 256, 256, generator=g).to(device)
    seeds = [int(s) for s in torch.randint(0, 2**62, (32,), generator=g)]
    methods: dict[str, Callable[[], Any]] = {
        "interpolate_antialias": lambda: RandomResizedCrop(224)(images, seeds),
        "grid_sample": lambda: RandomResizedCrop(224, antialias=False)(images, seeds),
    }
    plain = RandomResizedCrop(224)

    def interpolate_plain() -> Any:
        import torch.nn.functional as F

        out = []
        for i, s in enumerate(seeds):
            top, left, h, w = plain.params(s, 256, 256)
            crop = images[i : i + 1, :, top : top + h, left : left + w]
            out.append(F.interpolate(crop, size=(224, 224), mode="bilinear", align_corners=False))
        return torch.cat(out)

    methods["interpolate"] = interpolate_plain
    try:
        import kornia

        boxes = []
        for s in seeds:
            top, left, h, w = plain.params(s, 256, 256)
            r, b = left + w - 1, top + h - 1
            boxes.append([[left, top], [r, top], [r, b], [left, b]])
        kb = torch.tensor(boxes, dtype=torch.float32, device=device)
        methods["kornia_crop_and_resize"] = lambda: kornia.geometry.transform.crop_and_resize(
            images, kb, (224, 224)
        )
        kornia_version = kornia.__version__
    except ImportError:
        kornia_version = None
    out: dict[str, Any] = {"kornia": kornia_version}
    for name, fn in methods.items():
        fn()
        _sync(device)
        ts = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            _sync(device)
            ts.append((time.perf_counter() - t0) * 1e3)
        out[f"{name}_batch_ms_p50"] = round(statistics.median(ts), 3)
        out[f"{name}_batch_ms_p90"] = round(_p90(ts), 3)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; print the table; append a JSON line to the results file."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="a short run (< 30 s)")
    parser.add_argument("--num-workers", type=int, default=2, help="workers for every form")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--batches", type=int, default=None, help="timed batches per round")
    parser.add_argument(
        "--warmup-batches", type=int, default=None, help="default: the batches loaded ahead"
    )
    parser.add_argument(
        "--tile", type=int, default=None, help="repeat the dataset N times (default: to fit)"
    )
    parser.add_argument("--start-method", default=None, choices=("fork", "spawn", "forkserver"))
    parser.add_argument("--device", default="cpu", help="where the device half runs")
    parser.add_argument("--data", type=Path, default=None, help="an ImageFolder directory")
    parser.add_argument("--crop", action="store_true", help="also time the crop methods")
    parser.add_argument("--out", type=Path, default=RESULTS / "device_split.jsonl")
    args = parser.parse_args(argv)

    import torch
    from torch.utils.data import DataLoader

    import wellfed
    from wellfed.platform import collect_platform_info
    from wellfed.workloads import builtin_dataset, device_train_transform

    # One intra-op thread in the main process, for every form: the device half on the CPU is
    # the main process' work, as a GPU's would be off the CPU; workers run one thread anyway.
    torch.set_num_threads(1)
    data = args.data or (HYMENOPTERA_TRAIN if HYMENOPTERA_TRAIN.is_dir() else None)
    repeats = args.repeats or (1 if args.smoke else 5)
    batches = args.batches or (3 if args.smoke else 24)
    bs, n, device = args.batch_size, args.num_workers, args.device
    depth = 2  # to_device's look-ahead: it fetches batch k + 2 before it hands out batch k
    ahead = n * 2 + depth  # the workers' queue (prefetch_factor 2) and to_device's look-ahead
    warmup = args.warmup_batches
    if warmup is None:
        warmup = 1 if args.smoke else ahead
    base = {"float": builtin_dataset(data), "uint8": builtin_dataset(data, output="uint8")}
    # full batches for the warm-up, the timed ones and the look-ahead past the last timed one
    # (a short or missing batch there would come back at once and inflate the rate)
    need = (warmup + batches + depth) * bs
    tile = args.tile or max(1, -(-need // len(base["float"])))
    datasets: dict[str, Any] = {
        form: torch.utils.data.ConcatDataset([ds] * tile) if tile > 1 else ds
        for form, ds in base.items()
    }
    datasets["plain"] = datasets["float"]
    if len(datasets["float"]) < need:
        print("dataset too small for these settings (raise --tile)", file=sys.stderr)
        return 2
    common: dict[str, Any] = {
        "batch_size": bs,
        "shuffle": True,
        "num_workers": n,
        "pin_memory": device.startswith("cuda"),
        "persistent_workers": False,
    }
    if n:
        common.update(prefetch_factor=2, timeout=120)
        if args.start_method:
            common["multiprocessing_context"] = args.start_method
    transform = device_train_transform()

    def make(form: str, seed: int) -> Any:
        if form == "plain":
            torch.manual_seed(seed)
            return DataLoader(datasets["plain"], **common)
        loader = wellfed.create_dataloader(
            datasets[form], seed=seed, sample_seeds=form == "uint8", **common
        )
        return wellfed.to_device(loader, device, transform=transform if form == "uint8" else None)

    # bytes per sample crossing from the workers: one real batch of each form, as delivered
    first = {
        "float": next(iter(DataLoader(datasets["float"], batch_size=bs))),
        "uint8": next(iter(DataLoader(datasets["uint8"], batch_size=bs))),
    }
    per_sample = {k: batch_nbytes(v) / bs for k, v in first.items()}
    image_bytes = {k: batch_nbytes(v[0]) / bs for k, v in first.items()}

    batch_s: dict[str, list[float]] = {f: [] for f in FORMS}
    rates: dict[str, list[float]] = {f: [] for f in FORMS}
    t_start = time.perf_counter()
    for r in range(repeats):
        order = FORMS[r % 3 :] + FORMS[: r % 3]
        for form in order:
            times, samples = _time(make(form, r), warmup, batches, device)
            batch_s[form].extend(times)
            rates[form].append(samples / sum(times))
    wall = time.perf_counter() - t_start
    crop = _crop_methods(device, 3 if args.smoke else 9) if args.crop else None

    info = collect_platform_info(include_gpus=device.startswith("cuda"))
    record: dict[str, Any] = {
        "benchmark": "device_split",
        "command": " ".join(["python", "benchmarks/device_split.py", *(argv or sys.argv[1:])]),
        "workload": "builtin ImageFolder: JPEG decode + RandomResizedCrop(224) + flip + normalize",
        "data": str(data) if data else "shipped photos x 32",
        "dataset_samples": len(base["float"]),
        "tile": tile,
        "batch_size": bs,
        "num_workers": n,
        "start_method": args.start_method or (info.default_start_method if n else None),
        "device": device,
        "pin_memory": common["pin_memory"],
        "repeats": repeats,
        "timed_batches": batches,
        "warmup_batches": warmup,
        "torch_threads_main": 1,
        "float_bytes_per_sample": per_sample["float"],
        "uint8_bytes_per_sample": per_sample["uint8"],
        "float_image_bytes_per_sample": image_bytes["float"],
        "uint8_image_bytes_per_sample": image_bytes["uint8"],
        "bytes_ratio": round(per_sample["float"] / per_sample["uint8"], 3),
        "image_bytes_ratio": round(image_bytes["float"] / image_bytes["uint8"], 3),
        "wall_s": round(wall, 2),
        "crop": crop,
    }
    for form in FORMS:
        record[f"{form}_samples_per_s_p50"] = round(statistics.median(rates[form]), 2)
        record[f"{form}_samples_per_s_p90"] = round(_p90(rates[form]), 2)
        record[f"{form}_batch_ms_p50"] = round(statistics.median(batch_s[form]) * 1e3, 2)
        record[f"{form}_batch_ms_p90"] = round(_p90(batch_s[form]) * 1e3, 2)
        record[f"raw_{form}_samples_per_s"] = [round(x, 2) for x in rates[form]]
    record["uint8_over_float_samples_per_s"] = round(
        record["uint8_samples_per_s_p50"] / record["float_samples_per_s_p50"], 3
    )
    # the forms ran interleaved, one of each per round: the ratio within each round
    paired = [u / f for u, f in zip(rates["uint8"], rates["float"], strict=True)]
    record["uint8_over_float_paired_p50"] = round(statistics.median(paired), 3)
    record["uint8_over_float_paired_rounds_ge_1"] = sum(r >= 1.0 for r in paired)
    record["env"] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "wellfed": wellfed.__version__,
        "git_sha": git_sha(mark_dirty=True),
        "cpu": platform.processor() or platform.machine(),
        "usable_cpus": info.usable_cpus,
        "os": f"{info.os} {info.os_release}",
        "gpus": [g.name for g in info.gpus] if info.gpus else [],
        "load_average": list(__import__("os").getloadavg()),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("a") as f:
        f.write(json.dumps(record) + "\n")
    print(
        f"bytes per sample from the workers: float32 {per_sample['float']:,.0f} B, "
        f"uint8 {per_sample['uint8']:,.0f} B ({record['bytes_ratio']}x; images alone "
        f"{record['image_bytes_ratio']}x)"
    )
    print(f"{n} workers, batch {bs}, device half on {device}; samples/s median (p90) of rounds:")
    for form in FORMS:
        print(
            f"  {form:5s} {record[f'{form}_samples_per_s_p50']:8.1f} "
            f"({record[f'{form}_samples_per_s_p90']:.1f})  batch ms p50 "
            f"{record[f'{form}_batch_ms_p50']:.1f}, p90 {record[f'{form}_batch_ms_p90']:.1f}"
        )
    print(
        f"uint8 / float: {record['uint8_over_float_samples_per_s']}x of the medians, "
        f"{record['uint8_over_float_paired_p50']}x paired per round "
        f"({record['uint8_over_float_paired_rounds_ge_1']} of {repeats} rounds >= 1)  "
        f"(wall {wall:.1f} s)"
    )
    if crop:
        print("crop methods, ms per batch of 32 (3, 256, 256) -> 224, p50:")
        for k, v in crop.items():
            if k.endswith("_p50"):
                print(f"  {k[: -len('_batch_ms_p50')]}: {v}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
