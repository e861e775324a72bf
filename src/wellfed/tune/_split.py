"""What tune measures of the device side: bytes per sample, the copy ceiling, the uint8 split.

Two facts come from one isolated child (``device_facts``), so that tune's own process never
initialises CUDA (forked trials could not use it after) nor loads data: the bytes per sample
of one real batch of each workload form (``wellfed.device.batch_nbytes`` over its samples),
and, with a CUDA device, the host-to-device bandwidth, pinned vs pageable
(``wellfed.platform.measure_host_to_device``). The split form's trial itself goes through the
measuring core like every other (``measure(split_spec, config)``: the spec's ``make_loader``
wraps the loader in ``to_device``); ``compare_forms`` turns the two forms' figures into the
recommendation (issue 17, items 3 and 5). With a CUDA device where GPU decode is available,
the decode form (file bytes from the workers, nvJPEG on the device) is one more trial
(``compare_decode``); otherwise ``decode_not_measured`` says why (item 4).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from wellfed._meter import leading_dim
from wellfed.measure import Trial, iterate
from wellfed.target import LoaderConfig, LoaderSpec
from wellfed.tune._result import DecodeComparison, SplitComparison

__all__ = [
    "DECODE_CODE",
    "SPLIT_CODE",
    "compare_decode",
    "compare_forms",
    "copy_ceiling",
    "decode_not_measured",
    "device_facts",
]

#: What the recommendation tells a user of the built-in workload to run.
SPLIT_CODE = (
    "builtin_dataset(output='uint8') + wellfed.to_device(loader, device, "
    "transform=device_train_transform())"
)

#: The decode form, for the figures' sentence.
DECODE_CODE = (
    "builtin_dataset(output='encoded') + collate_fn=collate_encoded + "
    "wellfed.to_device(loader, 'cuda', transform=decode_train_transform('cuda'))"
)


def _bytes_per_sample(spec: LoaderSpec) -> float:
    """Bytes per sample of one real batch as the workers send it (the loader alone, no device
    half), in the main process through the loader driver."""
    from wellfed.device import batch_nbytes

    # the seeds a SeededBatch carries are Python ints: no tensor bytes
    workers_half = dataclasses.replace(
        spec, device=None, device_transform=None, seed=None, sample_seeds=False
    )
    loader = workers_half.make_loader(LoaderConfig(batch_size=spec.batch_size))
    for batch in iterate(loader, max_batches=1):
        return float(batch_nbytes(batch) / max(1, leading_dim(batch)))
    raise ValueError(f"the loader of {spec.description!r} yielded no batch")


def device_facts(specs: list[LoaderSpec], measure_copy: bool) -> dict[str, Any]:
    """Child body (run it with ``run_isolated``): bytes per sample of each spec, and with
    ``measure_copy`` (a CUDA device) the host-to-device bandwidth and whether GPU decode is
    available (torchvision is imported here, in the child, never in tune's own process).

    Returns:
        ``{"bytes_per_sample": [float, ...] (one per spec, in order), "host_to_device":
        HostToDevice.to_dict() or None, "gpu_decode_unavailable": why (str), or None when
        available}``; without ``measure_copy`` the last is "no CUDA device".
    """
    from wellfed.device import gpu_decode_unavailable
    from wellfed.platform import measure_host_to_device

    h2d = measure_host_to_device() if measure_copy else None
    return {
        "bytes_per_sample": [_bytes_per_sample(s) for s in specs],
        "host_to_device": h2d.to_dict() if h2d is not None else None,
        "gpu_decode_unavailable": gpu_decode_unavailable("cuda")
        if measure_copy
        else "no CUDA device",
    }


def decode_not_measured(why: str) -> DecodeComparison:
    """The decode form, not measured: ``why`` in one sentence ("GPU decode not measured: ...").

    Args:
        why: The reason: "no CUDA device", "torchvision not importable (ImportError: ...)",
            a time budget or a failed trial.
    """
    return DecodeComparison(measured=False, reason=f"GPU decode not measured: {why}")


def compare_decode(
    config: LoaderConfig,
    device: str,
    float_trial: Trial,
    decode_trial: Trial,
    float_bytes_per_sample: float,
    encoded_bytes_per_sample: float,
    noise_samples_per_s: float,
    uint8_samples_per_s: float | None = None,
) -> DecodeComparison:
    """The decode form's figures beside the float (and uint8 split) form's at ``config``.

    The sentence reports them and says whether the decode form's samples/s is above, below
    or within the noise of the float form's (2 standard errors of the difference). Both
    trials must be ok.
    """
    f = float_trial.samples_per_s or 0.0
    d = decode_trial.samples_per_s or 0.0
    ratio = float_bytes_per_sample / encoded_bytes_per_sample if encoded_bytes_per_sample else 0.0
    split = f", the uint8 split's {uint8_samples_per_s:.0f}" if uint8_samples_per_s else ""
    if abs(d - f) <= noise_samples_per_s:
        verdict = f"within the noise (+-{noise_samples_per_s:.0f}) of the float form's"
    elif d > f:
        verdict = f"{d / f:.2f}x the float form's" if f > 0 else "above the float form's"
    else:
        verdict = f"{1 - d / f:.0%} below the float form's, beyond the noise"
    text = (
        f"decode on {device} (nvJPEG): {encoded_bytes_per_sample:,.0f} B per sample from the "
        f"workers (the files' bytes; {ratio:.1f}x fewer than float32's "
        f"{float_bytes_per_sample:,.0f} B); {d:.0f} samples/s against the float form's "
        f"{f:.0f}{split}: {verdict}. The form: {DECODE_CODE}"
    )
    return DecodeComparison(
        measured=True,
        reason=text,
        device=device,
        config=config,
        encoded_bytes_per_sample=encoded_bytes_per_sample,
        float_bytes_per_sample=float_bytes_per_sample,
        samples_per_s=d,
        float_samples_per_s=f,
        uint8_samples_per_s=uint8_samples_per_s,
        noise_samples_per_s=noise_samples_per_s,
        trial=decode_trial,
    )


def copy_ceiling(pinned_gb_s: float, bytes_per_sample: float) -> float:
    """Samples/s the pinned host-to-device copy allows: bandwidth / bytes per sample.

    GB/s are 10**9 bytes per second (as ``HostToDevice`` reports them). Each local rank
    copies to its own device, so the figure is per rank.
    """
    return pinned_gb_s * 1e9 / bytes_per_sample if bytes_per_sample > 0 else float("inf")


def _percent(fraction: float) -> str:
    return f"{fraction:.1%}" if fraction < 0.1 else f"{fraction:.0%}"


def compare_forms(
    config: LoaderConfig,
    device: str,
    float_trial: Trial,
    split_trial: Trial,
    float_bytes_per_sample: float,
    uint8_bytes_per_sample: float,
    noise_samples_per_s: float,
    *,
    float_through_device: bool = False,
) -> SplitComparison:
    """The two forms' figures at one configuration, and the recommendation they support.

    ``float_through_device``: the float trial went through ``to_device(device)`` too (tune
    does so with a CUDA device), so both rates count the copy; else the split's alone does
    (on the CPU ``to_device`` moves nothing: the same thing).

    The split is recommended unless its samples/s is below the float form's by more than
    ``noise_samples_per_s`` (2 standard errors of the difference): it sends ~4x fewer bytes
    per sample, so when the two rates cannot be told apart it is the better choice, and on a
    GPU its device half costs the main process less than on the CPU, where it was measured
    without one. Both trials must be ok.
    """
    f = float_trial.samples_per_s or 0.0
    u = split_trial.samples_per_s or 0.0
    bytes_ratio = float_bytes_per_sample / uint8_bytes_per_sample
    speed = u / f if f > 0 else float("inf")
    use_split = u >= f - noise_samples_per_s
    if use_split and u >= f:
        text = (
            f"uint8 split: {bytes_ratio:.1f}x fewer bytes per sample, {speed:.2f}x the "
            f"samples/s: use {SPLIT_CODE}"
        )
    elif use_split:
        text = (
            f"uint8 split: {bytes_ratio:.1f}x fewer bytes per sample; its samples/s ({u:.0f}) "
            f"and the float form's ({f:.0f}) differ by less than the noise (+-"
            f"{noise_samples_per_s:.0f}) of these short trials, so the bytes decide: use "
            f"{SPLIT_CODE} (benchmarks/device_split.py measures the two side by side)"
        )
    else:
        text = (
            f"float form kept: the split measured {_percent(1 - speed)} slower here ({u:.0f} "
            f"vs {f:.0f} samples/s, beyond the noise of {noise_samples_per_s:.0f}; its trial "
            f"included the main process's per-batch work through to_device on {device}"
            + (
                ", the copy included, which the float form's trial did not"
                if device != "cpu" and not float_through_device
                else ""
            )
            + ")"
        )
    return SplitComparison(
        config=config,
        device=device,
        float_bytes_per_sample=float_bytes_per_sample,
        uint8_bytes_per_sample=uint8_bytes_per_sample,
        bytes_ratio=bytes_ratio,
        float_samples_per_s=f,
        uint8_samples_per_s=u,
        noise_samples_per_s=noise_samples_per_s,
        use_split=use_split,
        recommendation=text,
        trial=split_trial,
        float_through_device=float_through_device,
    )
