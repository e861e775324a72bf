"""Facts about this machine that decide how a DataLoader can run here.

Usable CPUs honour the scheduler affinity mask and cgroup v1/v2 CPU quotas (a container
limited to 2 CPUs on a 64-core host has 2 usable CPUs, whatever ``os.cpu_count()`` says).
"""

from __future__ import annotations

import dataclasses
import math
import os
import platform as _stdlib_platform
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "LOCAL_WORLD_SIZE_VARS",
    "GPUInfo",
    "HostToDevice",
    "PlatformInfo",
    "collect_platform_info",
    "default_start_method",
    "is_rank_zero",
    "is_windows",
    "local_rank",
    "local_world_size",
    "local_world_size_source",
    "measure_host_to_device",
    "rank_and_world_size",
    "usable_cpu_count",
    "usable_cpus_per_rank",
]


@dataclass(frozen=True)
class GPUInfo:
    """One CUDA device.

    Attributes:
        index: CUDA device index.
        name: Device name as CUDA reports it.
        memory_bytes: Total device memory in bytes.
    """

    index: int
    name: str
    memory_bytes: int

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict of the fields."""
        return dataclasses.asdict(self)


#: Bytes per host-to-device copy when measuring its bandwidth: 64 MiB, past the size where
#: a PCIe copy reaches its sustained rate (a few MiB; NVIDIA's bandwidthTest uses 32 MB),
#: and about 3.5 batches of 32 float32 (3, 224, 224) images.
H2D_COPY_BYTES = 64 * 2**20

#: Timed copies per kind of host memory; the median is reported.
H2D_REPEATS = 5


@dataclass(frozen=True)
class HostToDevice:
    """Host-to-device copy bandwidth of one CUDA device, from pinned and from pageable memory.

    Measured by ``measure_host_to_device``: ``copy_bytes`` copied ``repeats`` times from
    each kind of host memory into one device tensor, each copy timed with CUDA events
    (after one untimed warm-up copy of each), the median reported. GB/s are 10**9 bytes per
    second.

    Attributes:
        device: The CUDA device index.
        name: The device's name as CUDA reports it.
        copy_bytes: Bytes per copy.
        repeats: Timed copies per kind of memory.
        pinned_gb_s: Median bandwidth from page-locked (pinned) host memory, GB/s.
        pageable_gb_s: Median bandwidth from ordinary (pageable) host memory, GB/s: the
            driver stages such a copy through a pinned buffer, and it blocks the host.
    """

    device: int
    name: str
    copy_bytes: int
    repeats: int
    pinned_gb_s: float
    pageable_gb_s: float

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict of the fields."""
        return dataclasses.asdict(self)

    def describe(self) -> str:
        """One line: "pinned P GB/s, pageable Q GB/s (cuda:I NAME, 64 MiB copies, median of
        5)"."""
        return (
            f"pinned {self.pinned_gb_s:.1f} GB/s, pageable {self.pageable_gb_s:.1f} GB/s "
            f"(cuda:{self.device} {self.name}, {self.copy_bytes / 2**20:.0f} MiB copies, "
            f"median of {self.repeats})"
        )


def measure_host_to_device(
    device: int = 0, *, copy_bytes: int = H2D_COPY_BYTES, repeats: int = H2D_REPEATS
) -> HostToDevice | None:
    """Measure host-to-device copy bandwidth, pinned vs pageable, on one CUDA device.

    Initialises CUDA in this process (``fork`` workers started after it cannot use CUDA):
    ``wellfed tune`` runs it in an isolated child, ``wellfed info`` in its own process.

    Args:
        device: CUDA device index.
        copy_bytes: Bytes per copy (default H2D_COPY_BYTES, 64 MiB).
        repeats: Timed copies per kind of memory (default H2D_REPEATS, 5); the median counts.

    Returns:
        A HostToDevice, or None when torch is missing, no CUDA device is present, or the test
        copy fails on the device (out of memory beside a running job, an exclusive-process
        GPU): a fact not measured never stops ``wellfed info`` or tune.

    Source:
        The method of NVIDIA's ``bandwidthTest`` sample (cuda-samples: pinned vs pageable
        host memory, CUDA-event timing), with torch's ``Tensor.copy_``.
    """
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    try:
        return _copy_rates(torch, device, copy_bytes, repeats)
    except RuntimeError:  # torch.cuda.OutOfMemoryError and CUDA errors are RuntimeErrors
        return None


def _copy_rates(torch: Any, device: int, copy_bytes: int, repeats: int) -> HostToDevice:
    import statistics

    dev = torch.device("cuda", device)
    dst = torch.empty(copy_bytes, dtype=torch.uint8, device=dev)
    pageable = torch.ones(copy_bytes, dtype=torch.uint8)
    pinned = pageable.pin_memory()
    rates: dict[bool, list[float]] = {True: [], False: []}
    with torch.cuda.device(dev):
        for is_pinned, src in ((True, pinned), (False, pageable)):
            dst.copy_(src, non_blocking=is_pinned)  # warm-up, not timed
            torch.cuda.synchronize(dev)
            for _ in range(repeats):
                start = torch.cuda.Event(enable_timing=True)
                end = torch.cuda.Event(enable_timing=True)
                start.record()
                dst.copy_(src, non_blocking=is_pinned)
                end.record()
                end.synchronize()
                seconds = start.elapsed_time(end) / 1e3
                rates[is_pinned].append(copy_bytes / seconds / 1e9 if seconds > 0 else math.inf)
    name = torch.cuda.get_device_name(dev)
    del dst, pinned
    return HostToDevice(
        device=device,
        name=name,
        copy_bytes=copy_bytes,
        repeats=repeats,
        pinned_gb_s=statistics.median(rates[True]),
        pageable_gb_s=statistics.median(rates[False]),
    )


@dataclass(frozen=True)
class PlatformInfo:
    """What this machine offers a DataLoader.

    Attributes:
        os: ``platform.system()``: "Linux", "Darwin" or "Windows".
        os_release: Kernel or OS release string.
        machine: CPU architecture, e.g. "x86_64".
        python_version: e.g. "3.11.7".
        torch_version: ``torch.__version__``, or None when torch is not importable.
        numpy_version: ``numpy.__version__``, or None.
        default_start_method: The start method multiprocessing uses when none is given.
        start_methods: Start methods available here, default first.
        cpu_count: ``os.cpu_count()``: logical CPUs of the host.
        usable_cpus: CPUs this process may use: affinity mask and cgroup quota applied.
        cpu_quota: cgroup CPU quota in CPUs (may be fractional), or None when unlimited.
        ram_total_bytes: Physical memory (or the cgroup memory limit when lower), bytes.
        ram_available_bytes: Memory available to new processes now, bytes.
        shm_total_bytes: Size of /dev/shm in bytes, or None where there is none.
        shm_free_bytes: Free space in /dev/shm in bytes, or None.
        open_files_limit: Soft ``ulimit -n`` (RLIMIT_NOFILE), or None where unknown.
        open_files_hard_limit: Hard RLIMIT_NOFILE, or None.
        gpus: CUDA devices, empty without CUDA.
        host_to_device: Host-to-device copy bandwidth of the first CUDA device, pinned vs
            pageable (``measure_host_to_device``), or None: not measured (no CUDA device, or
            not asked for: ``collect_platform_info(measure_transfer=True)``).
    """

    os: str
    os_release: str
    machine: str
    python_version: str
    torch_version: str | None
    numpy_version: str | None
    default_start_method: str
    start_methods: tuple[str, ...]
    cpu_count: int
    usable_cpus: int
    cpu_quota: float | None
    ram_total_bytes: int
    ram_available_bytes: int
    shm_total_bytes: int | None
    shm_free_bytes: int | None
    open_files_limit: int | None
    open_files_hard_limit: int | None
    gpus: tuple[GPUInfo, ...] = ()
    host_to_device: HostToDevice | None = None

    @property
    def has_cuda(self) -> bool:
        """True when at least one CUDA device is present."""
        return bool(self.gpus)

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict of the fields (``gpus`` as a list of dicts)."""
        out = dataclasses.asdict(self)
        out["start_methods"] = list(self.start_methods)
        out["gpus"] = [g.to_dict() for g in self.gpus]
        out["host_to_device"] = self.host_to_device.to_dict() if self.host_to_device else None
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PlatformInfo:
        """Build a PlatformInfo from ``to_dict()`` output (unknown keys are ignored)."""
        names = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in data.items() if k in names}
        kwargs["start_methods"] = tuple(data["start_methods"])
        kwargs["gpus"] = tuple(GPUInfo(**g) for g in data.get("gpus", ()))
        h2d = data.get("host_to_device")
        kwargs["host_to_device"] = HostToDevice(**h2d) if h2d else None
        return cls(**kwargs)


def _cgroup_cpu_quota() -> float | None:
    """CPU quota in CPUs from cgroup v2 ``cpu.max`` or v1 ``cfs_quota_us``; None if unlimited."""
    v2 = Path("/sys/fs/cgroup/cpu.max")
    try:
        if v2.is_file():
            quota, period = v2.read_text().split()[:2]
            if quota != "max" and int(period) > 0:
                return int(quota) / int(period)
            return None
        for base in ("/sys/fs/cgroup/cpu,cpuacct", "/sys/fs/cgroup/cpu"):
            q, p = Path(base, "cpu.cfs_quota_us"), Path(base, "cpu.cfs_period_us")
            if q.is_file() and p.is_file():
                quota_us, period_us = int(q.read_text()), int(p.read_text())
                if quota_us > 0 and period_us > 0:
                    return quota_us / period_us
                return None
    except (OSError, ValueError):
        return None
    return None


def _cgroup_memory_limit() -> int | None:
    """cgroup v2 ``memory.max`` or v1 ``memory.limit_in_bytes`` in bytes; None if unlimited."""
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = Path(path).read_text().strip()
        except OSError:
            continue
        if text == "max":
            return None
        try:
            value = int(text)
        except ValueError:
            return None
        return value if value < 2**60 else None  # v1 reports "unlimited" as a huge number
    return None


def usable_cpu_count() -> int:
    """CPUs this process may run on: the affinity mask, capped by the cgroup quota (>= 1).

    The quota is rounded up: a 1.5-CPU quota lets two workers each run part of the time.
    """
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    quota = _cgroup_cpu_quota()
    if quota is not None:
        cpus = min(cpus, max(1, math.ceil(quota)))
    return max(1, cpus)


#: Where the local world size is read from, in order: torchrun, Slurm, Open MPI (the variables
#: Lightning and Accelerate read too).
LOCAL_WORLD_SIZE_VARS = ("LOCAL_WORLD_SIZE", "SLURM_NTASKS_PER_NODE", "OMPI_COMM_WORLD_LOCAL_SIZE")


def local_world_size() -> int:
    """Training processes on this machine: ``LOCAL_WORLD_SIZE`` (torchrun), else 1.

    Falls back to ``SLURM_NTASKS_PER_NODE`` and ``OMPI_COMM_WORLD_LOCAL_SIZE`` (Slurm,
    Open MPI), the variables Lightning and Accelerate read too.
    """
    for name in LOCAL_WORLD_SIZE_VARS:
        value = os.environ.get(name, "")
        if value.isdigit() and int(value) > 0:
            return int(value)
    return 1


def local_world_size_source() -> str | None:
    """The environment variable ``local_world_size`` read its value from, or None (1 rank)."""
    for name in LOCAL_WORLD_SIZE_VARS:
        value = os.environ.get(name, "")
        if value.isdigit() and int(value) > 0:
            return name
    return None


def local_rank() -> int | None:
    """This process's rank on its machine under a launcher (``LOCAL_RANK``, set by torchrun,
    ``accelerate launch`` and Lightning; else Slurm's ``SLURM_LOCALID``, Open MPI's
    ``OMPI_COMM_WORLD_LOCAL_RANK``), or None outside one."""
    for name in ("LOCAL_RANK", "SLURM_LOCALID", "OMPI_COMM_WORLD_LOCAL_RANK"):
        value = os.environ.get(name, "")
        if value.isdigit():
            return int(value)
    return None


def is_windows() -> bool:
    """True on Windows (note 002's helper).

    Windows is not a reason for ``num_workers=0``: its start method is spawn, like macOS, and
    spawn workers work when the dataset pickles and the script guards its entry point with
    ``if __name__ == "__main__":``. ``create_dataloader`` keeps workers on Windows unless the
    doctor finds a hazard; ``wellfed doctor TARGET`` names each one with its fix.
    """
    return sys.platform == "win32"


def is_rank_zero() -> bool:
    """True unless this process is a non-zero rank of a distributed job (torchrun's RANK)."""
    try:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            return bool(dist.get_rank() == 0)
    except (ImportError, RuntimeError):
        pass
    return os.environ.get("RANK", "0") in ("", "0")


def rank_and_world_size() -> tuple[int, int]:
    """(global rank, world size) of this process: (0, 1) outside a distributed job.

    Read from torch.distributed when a process group is initialized, else from ``RANK`` and
    ``WORLD_SIZE`` (set by torchrun, ``accelerate launch`` and Lightning's launcher before the
    process group exists), else (0, 1). Read each time: a loader built before
    ``init_process_group`` sees the group when it iterates.
    """
    try:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            return int(dist.get_rank()), int(dist.get_world_size())
    except (ImportError, RuntimeError):
        pass
    rank, world = os.environ.get("RANK", ""), os.environ.get("WORLD_SIZE", "")
    if rank.isdigit() and world.isdigit() and int(rank) < int(world):
        return int(rank), int(world)
    return 0, 1


def usable_cpus_per_rank() -> int:
    """Usable CPUs divided among this machine's training processes (>= 1)."""
    return max(1, usable_cpu_count() // local_world_size())


def default_start_method() -> str:
    """The start method multiprocessing uses when none is given (set or platform default)."""
    import multiprocessing

    method = multiprocessing.get_start_method(allow_none=True)
    if method is None:
        method = multiprocessing.get_context().get_start_method()
    return method


def _gpus() -> tuple[GPUInfo, ...]:
    try:
        import torch
    except ImportError:
        return ()
    if not torch.cuda.is_available():
        return ()
    out = []
    for i in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(i)
        out.append(GPUInfo(index=i, name=props.name, memory_bytes=int(props.total_memory)))
    return tuple(out)


def _version(module: str) -> str | None:
    try:
        mod = __import__(module)
    except ImportError:
        return None
    return str(getattr(mod, "__version__", None))


def collect_platform_info(
    *, include_gpus: bool = True, measure_transfer: bool = False
) -> PlatformInfo:
    """Collect the facts of this machine that decide how DataLoader workers can run.

    Args:
        include_gpus: Query CUDA devices. Querying their properties initialises CUDA in this
            process, after which ``fork`` workers can no longer use CUDA; pass False to avoid it.
        measure_transfer: Also measure host-to-device bandwidth, pinned vs pageable, on the
            first CUDA device (``measure_host_to_device``: 2 x 6 copies of 64 MiB, well under
            a second), into ``host_to_device``; None without a CUDA device. Needs
            ``include_gpus``. ``wellfed info`` asks for it.

    Returns:
        A frozen PlatformInfo.
    """
    import multiprocessing

    import psutil

    default = default_start_method()
    methods = multiprocessing.get_all_start_methods()
    methods = [default, *[m for m in methods if m != default]]

    vm = psutil.virtual_memory()
    ram_total = int(vm.total)
    limit = _cgroup_memory_limit()
    if limit is not None and limit < ram_total:
        ram_total = limit
    ram_available = min(int(vm.available), ram_total)

    shm_total = shm_free = None
    if Path("/dev/shm").is_dir():
        usage = shutil.disk_usage("/dev/shm")
        shm_total, shm_free = int(usage.total), int(usage.free)

    soft = hard = None
    try:
        import resource

        s, h = resource.getrlimit(resource.RLIMIT_NOFILE)
        soft = None if s == resource.RLIM_INFINITY else int(s)
        hard = None if h == resource.RLIM_INFINITY else int(h)
    except (ImportError, OSError, ValueError):
        pass

    gpus = _gpus() if include_gpus else ()
    return PlatformInfo(
        os=_stdlib_platform.system(),
        os_release=_stdlib_platform.release(),
        machine=_stdlib_platform.machine(),
        python_version=_stdlib_platform.python_version(),
        torch_version=_version("torch"),
        numpy_version=_version("numpy"),
        default_start_method=default,
        start_methods=tuple(methods),
        cpu_count=os.cpu_count() or 1,
        usable_cpus=usable_cpu_count(),
        cpu_quota=_cgroup_cpu_quota(),
        ram_total_bytes=ram_total,
        ram_available_bytes=ram_available,
        shm_total_bytes=shm_total,
        shm_free_bytes=shm_free,
        open_files_limit=soft,
        open_files_hard_limit=hard,
        gpus=gpus,
        host_to_device=measure_host_to_device(gpus[0].index) if measure_transfer and gpus else None,
    )
