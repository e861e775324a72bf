"""Seeds: the process-wide ``set_seed`` and per-sample seeds derived from (seed, epoch, index).

Per-sample seeding is what makes ``create_dataloader(seed=...)`` reproducible whatever the
worker count: before the user's ``__getitem__`` runs, Python ``random``, numpy's global RNG and
torch's global CPU generator are seeded from ``sample_seed(seed, epoch, index)``. No worker state
is involved, so the same index in the same epoch always sees the same random numbers.

Inside ``__getitem__`` a dataset may also ask for a private generator of the current sample:
``wellfed.sample_rng()`` (numpy) or ``wellfed.sample_generator()`` (torch). Both are seeded from
the same per-sample seed, with streams independent of the global RNGs.

Cost per sample (measured on this project's 2-CPU CI machine, torch 2.13 CPU, Python 3.11;
``benchmarks/seeding_overhead.py`` has the end-to-end figure): ``torch.manual_seed`` 118 us,
``torch.default_generator.manual_seed`` 1.3 us, ``random.seed`` 3.9 us, ``numpy.random.seed``
1.7 us, one splitmix64 mix in Python 0.3 us. So wellfed seeds torch's default CPU generator
directly and never calls ``torch.manual_seed`` per sample (which also walks CUDA, MPS, XPU and
custom backends); the generators behind ``sample_rng()``/``sample_generator()`` (about 8 us and
2 us) are only built when asked for.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import random
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

from wellfed.errors import ConfigError

if TYPE_CHECKING:
    import numpy as np
    import torch

__all__ = [
    "SeedInfo",
    "SeededBatch",
    "sample_generator",
    "sample_rng",
    "sample_seed",
    "set_seed",
]

logger = logging.getLogger(__name__)

_MASK64 = (1 << 64) - 1
_MASK32 = (1 << 32) - 1
_GOLDEN = 0x9E3779B97F4A7C15

# Domain-separation salts: each purpose gets its own stream from the same seed.
_SALT_EPOCH = 0x45504F4348  # "EPOCH"
_SALT_SHUFFLE = 0x53485546  # "SHUF"
_SALT_SAMPLER = 0x53414D50  # "SAMP"
_SALT_COLLATE = 0x434F4C4C  # "COLL"
_SALT_NUMPY_GEN = 0x4E50  # "NP"
_SALT_TORCH_GEN = 0x5447  # "TG"
_SALT_DEVICE = 0x444556  # "DEV": per-batch device transforms (wellfed.device)


def _mix(x: int) -> int:
    """splitmix64 finaliser: a bijective 64-bit hash with full avalanche.

    Source:
        Steele, Lea, Flood, "Fast splittable pseudorandom number generators", OOPSLA 2014;
        constants from Vigna's splitmix64.c (https://prng.di.unimi.it/splitmix64.c).
    """
    x = (x + _GOLDEN) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def _epoch_key(seed: int, epoch: int) -> int:
    """64-bit key of one epoch of one seed; sample seeds are derived from it."""
    return _mix(_mix((seed & _MASK64) ^ _SALT_EPOCH) ^ (epoch & _MASK64))


def _sample_seed_from_key(key: int, index: int) -> int:
    return _mix(key ^ _mix(index & _MASK64))


def _purpose_seed(seed: int, epoch: int, salt: int) -> int:
    """Seed for an epoch-level purpose (shuffle order, the user's sampler)."""
    return _mix(_epoch_key(seed, epoch) ^ salt)


def _fold(seeds: Iterable[int]) -> int:
    """Order-sensitive 64-bit combination of sample seeds (the seed of a whole batch)."""
    h = _SALT_COLLATE
    for s in seeds:
        h = _mix(h ^ s)
    return h


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """The 64-bit seed wellfed uses for one sample in one epoch.

    A pure function: the same (seed, epoch, index) gives the same value in every process, under
    every start method and worker count. ``create_dataloader(seed=...)`` seeds the global RNGs
    from it before calling the dataset's ``__getitem__(index)``.

    Args:
        seed: The loader's seed, >= 0.
        epoch: Epoch number, >= 0 (the first iteration over the loader is epoch 0).
        index: The sample index the sampler produced (an int, as for map-style datasets).

    Returns:
        An int in [0, 2**64).

    Source:
        splitmix64 hashing of (seed, epoch, index); see ``_mix``.
    """
    return _sample_seed_from_key(_epoch_key(seed, epoch), index)


class SeededBatch(NamedTuple):
    """A collated batch with the per-sample seed of each of its samples.

    A seeded loader built with ``sample_seeds=True`` (``create_dataloader(..., seed=0,
    sample_seeds=True)``) yields these instead of the bare batch, so that per-sample random
    transforms run later, on the device, per batch (``wellfed.device.BatchTransform``), draw
    the same numbers for the same (seed, epoch, index) whatever the worker count.

    A NamedTuple, so it pickles from worker processes, the DataLoader's pin-memory thread pins
    it field by field, and ``wellfed.to_device`` moves ``batch`` while ``seeds`` (Python ints)
    stay on the host, where the transforms derive their parameters without a device sync.

    Attributes:
        batch: What the collate function returned for the samples.
        seeds: ``sample_seed(seed, epoch, index)`` of each sample, in batch order: a tuple of
            B ints in [0, 2**64) (B = samples in the batch).
    """

    batch: Any
    seeds: tuple[int, ...]


# --- per-sample state (one per thread, so thread-based loaders do not mix samples) ----------


class _SampleState(threading.local):
    seed: int | None = None
    np_rng: Any = None
    torch_gen: Any = None


_STATE = _SampleState()


def _enter_sample(seed: int, *, seed_globals: bool = True) -> None:
    """Seed Python ``random``, numpy's global RNG and torch's CPU generator from ``seed``.

    The three get different bits of the 64-bit seed: numpy's legacy MT19937 and torch's MT19937
    both initialise from 32 bits with the same algorithm, so giving them the same 32 bits would
    make their raw streams identical. With ``seed_globals=False`` (thread workers, which share
    the process-wide RNGs) only this thread's sample state is set: ``sample_rng()`` and
    ``sample_generator()`` are then the reproducible sources.
    """
    import numpy as np
    import torch

    st = _STATE
    st.seed = seed
    st.np_rng = None
    st.torch_gen = None
    if not seed_globals:
        return
    random.seed(seed)
    np.random.seed(seed >> 32)  # high 32 bits
    torch.default_generator.manual_seed(seed & _MASK32)  # low 32 bits (torch uses 32 anyway)


def _leave_sample() -> None:
    st = _STATE
    st.seed = None
    st.np_rng = None
    st.torch_gen = None


def _current_sample_seed() -> int | None:
    return _STATE.seed


def sample_rng() -> np.random.Generator:
    """A numpy Generator private to the sample being loaded (call it inside ``__getitem__``).

    Within one ``__getitem__`` call, repeated calls return the same Generator (its stream goes
    on). It is seeded from the per-sample seed, so it gives the same numbers for the same
    (seed, epoch, index) under any worker count. For a dataset with batched fetch
    (``__getitems__``), the Generator belongs to the whole batch.

    Outside a seeded loader (``ds[i]`` called directly, or ``seed=None``), it returns a Generator
    seeded from the OS: fine for debugging, not reproducible.

    Returns:
        ``numpy.random.Generator`` (PCG64).

    Example:
        >>> def __getitem__(self, i):
        ...     noise = wellfed.sample_rng().normal(size=3)
    """
    import numpy as np

    st = _STATE
    if st.seed is None:
        return np.random.default_rng()
    if st.np_rng is None:
        st.np_rng = np.random.Generator(np.random.PCG64(_mix(st.seed ^ _SALT_NUMPY_GEN)))
    return st.np_rng  # type: ignore[no-any-return]


def sample_generator() -> torch.Generator:
    """A CPU ``torch.Generator`` private to the sample being loaded (call it in ``__getitem__``).

    Pass it as ``generator=`` to ``torch.rand``, ``torch.randint``, ``torch.randperm`` and
    friends. Same rules as ``sample_rng()``: one Generator per sample (per batch with
    ``__getitems__``), seeded from the per-sample seed; outside a seeded loader, seeded from the
    OS.

    Returns:
        ``torch.Generator`` on the CPU.

    Example:
        >>> def __getitem__(self, i):
        ...     x = torch.rand(3, generator=wellfed.sample_generator())
    """
    import torch

    st = _STATE
    if st.seed is None:
        g = torch.Generator()
        g.seed()
        return g
    if st.torch_gen is None:
        g = torch.Generator()
        g.manual_seed(_mix(st.seed ^ _SALT_TORCH_GEN))
        st.torch_gen = g
    return st.torch_gen  # type: ignore[no-any-return]


class _ForkSafeRLock:
    """A re-entrant lock that a forked child process gets fresh (unlocked)."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        if hasattr(os, "register_at_fork"):
            os.register_at_fork(after_in_child=self._reinit)

    def _reinit(self) -> None:
        self._lock = threading.RLock()

    def acquire(self) -> None:
        self._lock.acquire()

    def release(self) -> None:
        self._lock.release()

    def __enter__(self) -> None:
        self._lock.acquire()

    def __exit__(self, *exc: object) -> None:
        self._lock.release()


#: Held while wellfed seeds, uses and restores the process-wide RNGs in the main process (the
#: fetch of a batch with num_workers=0, the first draw of a user's sampler, torch's draw of an
#: iterator's base seed). Python ``random``, numpy's global RNG and torch's default generator
#: are shared by all threads, so two threads loading seeded batches at once would otherwise
#: draw from each other's seeds. Re-entrant (a dataset may load from another seeded loader).
#: The fetch in a worker process does not take it (a worker's RNGs are its own), and a child
#: forked while another thread held it gets a fresh one, so it cannot deadlock a worker.
_RNG_LOCK = _ForkSafeRLock()


class _SeededGlobals:
    """Run a block with the three global RNGs seeded from ``seed``, then restore them.

    Holds ``_RNG_LOCK`` throughout. Used around the first ``next()`` of a user's sampler, so a
    sampler that draws its order from Python ``random``, numpy's global RNG or torch's global
    generator (``RandomSampler`` without a generator, a numpy permutation) is a function of
    (seed, epoch).
    """

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self.snapshot: _GlobalRngSnapshot | None = None
        self.sample: tuple[Any, Any, Any] = (None, None, None)

    def __enter__(self) -> None:
        _RNG_LOCK.acquire()
        try:
            self.snapshot = _GlobalRngSnapshot()
            self.sample = (_STATE.seed, _STATE.np_rng, _STATE.torch_gen)
            _enter_sample(self.seed)
        except BaseException:
            _RNG_LOCK.release()
            raise

    def __exit__(self, *exc: object) -> None:
        try:
            _STATE.seed, _STATE.np_rng, _STATE.torch_gen = self.sample
            if self.snapshot is not None:
                self.snapshot.restore()
        finally:
            _RNG_LOCK.release()


class _GlobalRngSnapshot:
    """The state of the three global RNGs, to restore after loading in the main process.

    With ``num_workers=0`` samples load in the training process; without a restore, per-sample
    seeding would overwrite the RNG state the training loop uses (dropout, its own sampling).
    Cost about 50 us per batch, dominated by ``numpy.random.get_state``.
    """

    __slots__ = ("np_state", "py_state", "torch_state")

    def __init__(self) -> None:
        import numpy as np
        import torch

        self.py_state = random.getstate()
        self.np_state = np.random.get_state()
        self.torch_state = torch.default_generator.get_state()

    def restore(self) -> None:
        import numpy as np
        import torch

        random.setstate(self.py_state)
        np.random.set_state(self.np_state)
        torch.default_generator.set_state(self.torch_state)


# --- set_seed -------------------------------------------------------------------------------


@dataclass(frozen=True)
class SeedInfo:
    """What ``set_seed`` set, so a run can log and compare it.

    Attributes:
        seed: The seed given.
        python_seed: Seed given to ``random.seed``.
        numpy_seed: Seed given to ``numpy.random.seed`` (``seed mod 2**32``: numpy's limit).
        torch_seed: Seed given to ``torch.manual_seed`` (CPU and, lazily, every CUDA device).
        cuda_available: Whether a CUDA device was present (its generators are seeded lazily,
            when CUDA initialises, if it has not yet).
        deterministic: The ``deterministic`` argument.
        cudnn_deterministic: ``torch.backends.cudnn.deterministic`` after the call.
        cudnn_benchmark: ``torch.backends.cudnn.benchmark`` after the call.
        deterministic_algorithms: ``torch.are_deterministic_algorithms_enabled()`` after the call.
        cublas_workspace_config: ``CUBLAS_WORKSPACE_CONFIG`` after the call, or None if unset.
        pythonhashseed: ``PYTHONHASHSEED`` as this process started, or None. It cannot be
            changed from inside a running process; ``str`` hashes (set order) vary without it.
        notes: Things the caller should know (e.g. cuBLAS already initialised).
    """

    seed: int
    python_seed: int
    numpy_seed: int
    torch_seed: int
    cuda_available: bool
    deterministic: bool
    cudnn_deterministic: bool
    cudnn_benchmark: bool
    deterministic_algorithms: bool
    cublas_workspace_config: str | None
    pythonhashseed: str | None
    notes: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict of the fields."""
        out = dataclasses.asdict(self)
        out["notes"] = list(self.notes)
        return out


def _check_seed(seed: object, name: str = "seed") -> int:
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0 or seed >= 2**64:
        raise ConfigError(
            f"Invalid seed: {name}={seed!r} is not an int in [0, 2**64). Seeds must be "
            f"non-negative integers so every process derives the same per-sample seeds. "
            f"Pass an int such as {name}=0.",
            code="WF201",
            attribute=name,
            value=seed,
        )
    return seed


def set_seed(seed: int, *, deterministic: bool = False, benchmark: bool | None = None) -> SeedInfo:
    """Seed Python ``random``, numpy's global RNG and torch (CPU and CUDA) in this process.

    This is the once-per-script call (note 002's ``set_seed``). It changes global state on
    purpose. It does not make DataLoader workers reproducible on its own: torch seeds each
    worker from ``base_seed + worker_id``, so augmentations change with ``num_workers``. Use
    ``create_dataloader(..., seed=...)`` for that.

    Args:
        seed: Non-negative int, < 2**64. numpy's global RNG gets ``seed mod 2**32``.
        deterministic: Also ask for deterministic kernels: ``cudnn.deterministic=True``,
            ``torch.use_deterministic_algorithms(True)`` (ops without a deterministic version
            then raise), and ``CUBLAS_WORKSPACE_CONFIG=:4096:8`` unless already set. False
            leaves those settings as they are.
        benchmark: ``cudnn.benchmark`` value. None: False when ``deterministic``, otherwise
            unchanged (cuDNN autotuning picks kernels by timing, which varies run to run).

    Returns:
        SeedInfo describing what was set.

    Raises:
        ConfigError: ``seed`` is not a non-negative int below 2**64 (WF201).

    Example:
        >>> info = wellfed.set_seed(42, deterministic=True)
        >>> info.numpy_seed
        42

    Source:
        CUBLAS_WORKSPACE_CONFIG values: PyTorch "Reproducibility" notes
        (https://pytorch.org/docs/stable/notes/randomness.html) and the cuBLAS docs
        ("Results reproducibility").
    """
    import numpy as np
    import torch

    seed = _check_seed(seed)
    notes: list[str] = []
    random.seed(seed)
    np_seed = seed % 2**32
    np.random.seed(np_seed)
    torch.manual_seed(seed)  # also CUDA (lazily when not initialised yet)

    if deterministic:
        if "CUBLAS_WORKSPACE_CONFIG" not in os.environ:
            os.environ["CUBLAS_WORKSPACE_CONFIG"] = ":4096:8"
            if torch.cuda.is_initialized():  # type: ignore[no-untyped-call]
                notes.append(
                    "CUDA was already initialised: CUBLAS_WORKSPACE_CONFIG only takes effect "
                    "for cuBLAS handles created from now on; set it before the first CUDA call."
                )
        torch.backends.cudnn.deterministic = True
        torch.use_deterministic_algorithms(True)
    if benchmark is None:
        if deterministic:
            torch.backends.cudnn.benchmark = False
    else:
        torch.backends.cudnn.benchmark = bool(benchmark)
    hashseed = os.environ.get("PYTHONHASHSEED")
    if hashseed is None:
        notes.append(
            "PYTHONHASHSEED is unset: iteration order of sets of str differs between runs; "
            "export PYTHONHASHSEED=0 before starting Python if the data pipeline depends on it."
        )
    info = SeedInfo(
        seed=seed,
        python_seed=seed,
        numpy_seed=np_seed,
        torch_seed=seed,
        cuda_available=bool(torch.cuda.is_available()),
        deterministic=deterministic,
        cudnn_deterministic=bool(torch.backends.cudnn.deterministic),
        cudnn_benchmark=bool(torch.backends.cudnn.benchmark),
        deterministic_algorithms=bool(torch.are_deterministic_algorithms_enabled()),
        cublas_workspace_config=os.environ.get("CUBLAS_WORKSPACE_CONFIG"),
        pythonhashseed=hashseed,
        notes=tuple(notes),
    )
    logger.debug("set_seed: %s", info)
    return info
