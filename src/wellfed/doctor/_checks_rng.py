"""Static checks of the category 'rng-duplication'.

RNG objects copied with their state into every worker (WF107): held by an instance, or by
a class (a class attribute every instance shares, MONAI's ``Randomizable.R``); and
worker_init_fn seeds that repeat across workers or epochs (WF108), lambdas included.
"""

from __future__ import annotations

from typing import Any

from wellfed.doctor._classify import (
    class_attributes,
    code_names,
    pretty_type,
    rng_kind,
    source_text,
)
from wellfed.doctor._context import Context
from wellfed.doctor._report import Finding
from wellfed.doctor._source import (
    ClassAnalysis,
    analyze_class,
    is_user_code,
    reseeds_randomizables,
    seed_calls,
)

__all__ = [
    "check_rng",
    "check_worker_init_seeds",
    "rng_fix",
]


def check_rng(ctx: Context) -> list[Finding]:
    """WF107: RNG objects held by the dataset, transforms or collate_fn (global RNGs excluded).

    An RNG object is copied with its state into every worker (fork copies memory; spawn
    pickles the state), so all workers draw the same numbers. Not reported when
    worker_init_fn or worker code visibly reseeds that attribute, nor, when worker_init_fn
    calls ``set_rnd``/``set_random_state`` (MONAI's ``monai.data.utils.worker_init_fn``, what
    ``monai.data.DataLoader`` passes), for an RNG held by an object with a
    ``set_random_state`` method (user code or an installed package's).
    """
    out: list[Finding] = []
    wif = ctx.settings.get("worker_init_fn")
    wif_names = code_names(source_text(wif))
    reseeds_all = reseeds_randomizables(wif)
    seeded = ctx.settings.get("seed") is not None
    for node in ctx.worker_nodes():
        kind = rng_kind(node.obj)
        if kind is None:
            continue
        if node.attr and node.attr in wif_names:
            continue  # worker_init_fn replaces or reseeds it per worker
        owner = node.owner
        if reseeds_all and _has_random_state_setter(owner):
            continue  # worker_init_fn's set_rnd / set_random_state reseeds it per worker
        if owner is not None and node.attr and is_user_code(type(owner)):
            ana = analyze_class(type(owner), ctx.worker_hooks(owner))
            if node.attr in ana.mutations:
                continue  # worker code reassigns it (per-sample or per-worker seeding)
            if _reseeded_by_setter(ana, node.attr, wif_names):
                continue
        methods = ("fork", "spawn", "forkserver") if node.pickled else ("fork",)
        f = ctx.finding(
            "WF107",
            "error",
            node.path,
            f"{node.path} is a {kind} object: each worker gets an identical copy with the same "
            "state, so every worker draws the same random numbers (the same augmentations for "
            "different samples). PyTorch reseeds only the global random, numpy and torch RNGs "
            "per worker.",
            rng_fix(node.attr or "rng", seeded),
            f"static: {pretty_type(node.obj)} at {node.path}",
            methods,
        )
        if f is not None:
            out.append(f)
    out.extend(_class_level_rngs(ctx, wif_names, seeded, reseeds_all))
    return out


def _has_random_state_setter(obj: Any) -> bool:
    """True when obj's class defines ``set_random_state`` (MONAI's Randomizable protocol);
    looked up on the type, so no instance ``__getattr__`` runs."""
    return obj is not None and callable(getattr(type(obj), "set_random_state", None))


def _class_level_rngs(
    ctx: Context, wif_names: set[str], seeded: bool, reseeds_all: bool = False
) -> list[Finding]:
    """WF107 for an RNG held as a class attribute and read through an instance.

    Every instance shares the one object, and every forked worker gets a copy with the same
    state (re-forked each epoch from a parent whose copy never advanced: the same numbers
    every epoch too). Under spawn/forkserver each worker re-creates it when it imports the
    class: not reported there (identical only when the class seeds it with a constant).
    """
    out: list[Finding] = []
    reported: set[tuple[type, str]] = set()
    for ca in class_attributes(ctx):
        kind = rng_kind(ca.value)
        if kind is None or (ca.klass, ca.name) in reported:
            continue
        if ca.name in wif_names:
            continue  # worker_init_fn replaces or reseeds it per worker
        if reseeds_all and _has_random_state_setter(ca.node.obj):
            continue  # set_random_state gives the instance its own RNG in each worker
        cls = type(ca.node.obj)
        if is_user_code(cls):
            ana = analyze_class(cls, ctx.worker_hooks(ca.node.obj))
            if ca.name in ana.mutations:
                continue  # worker code assigns its own per instance
            if _reseeded_by_setter(ana, ca.name, wif_names):
                continue
        reported.add((ca.klass, ca.name))
        owner = f"{ca.klass.__qualname__}.{ca.name}"
        f = ctx.finding(
            "WF107",
            "error",
            ca.path,
            f"{ca.path} is a {kind} object held by the class ({owner}), not by the instance: "
            "every instance shares it, and each forked worker gets an identical copy with the "
            "same state, so every worker draws the same random numbers (and, as each epoch's "
            "workers fork from a main process whose copy never advanced, the same numbers "
            "every epoch). PyTorch reseeds only the global random, numpy and torch RNGs per "
            "worker.",
            _class_rng_fix(ca.node.path, ca.name, kind, owner, seeded),
            f"static: {pretty_type(ca.value)} in {ca.klass.__module__}.{owner} "
            f"(the class's own __dict__), read as {ca.path}",
            ("fork",),
        )
        if f is not None:
            out.append(f)
    return out


def _reseeded_by_setter(ana: ClassAnalysis, attr: str, wif_names: set[str]) -> bool:
    """True when worker_init_fn calls the method that assigns self.<attr> (MONAI's
    ``worker_info.dataset.transform.set_random_state(worker_info.seed % 2**32)``): each worker
    then gets its own RNG, seeded from its own seed."""
    setter = ana.changers.get(attr)
    return setter is not None and setter[0] in wif_names


#: How to make each kind of RNG from a worker's seed (``get_worker_info().seed``, an int64).
_RNG_FROM_SEED = {
    "random.Random": "random.Random(info.seed)",
    "numpy.random.RandomState": "np.random.RandomState(info.seed % 2**32)",
    "torch.Generator": "torch.Generator().manual_seed(info.seed)",
}


def _class_rng_fix(path: str, name: str, kind: str, owner: str, seeded: bool) -> str:
    """The fix of a class-level RNG: an instance attribute made per worker (it shadows the
    class's), or the per-sample generators of a seeded loader."""
    if seeded:
        return rng_fix(name, seeded)
    target = f"info.{path}" if path.startswith("dataset") else f"<{path}>"
    make = _RNG_FROM_SEED.get(kind, "np.random.default_rng(info.seed)")
    return (
        "Give each worker its own RNG, on the instance (it shadows the class attribute "
        f"{owner}):\n"
        "def worker_init_fn(worker_id):\n"
        "    info = torch.utils.data.get_worker_info()\n"
        f"    {target}.{name} = {make}\n"
        "or use the global RNGs in worker code (random.random(), np.random.rand(), "
        "torch.rand(); PyTorch reseeds them per worker). For numbers that do not change "
        "with num_workers, load with wellfed.create_dataloader(seed=...) and draw from "
        "wellfed.sample_rng() / wellfed.sample_generator() in __getitem__."
    )


def rng_fix(attr: str, seeded: bool) -> str:
    """WF107's fix. With ``create_dataloader(seed=...)``, the per-sample generators: reseeding
    per worker would make the numbers depend on num_workers, which the seed is there to stop."""
    per_sample = (
        "Draw from the per-sample generators in __getitem__ instead of this object: "
        "wellfed.sample_rng() (numpy) or wellfed.sample_generator() (torch), seeded from "
        "(seed, epoch, index), so the numbers are the same for any num_workers and start "
        f"method:\nrng = wellfed.sample_rng()  # instead of self.{attr}\n"
        "x = augment(x, rng)"
    )
    if seeded:
        return per_sample
    return (
        "Use the global RNGs in worker code (random.random(), np.random.rand(), "
        "torch.rand(); PyTorch reseeds them per worker), or reseed this object per worker:\n"
        "def worker_init_fn(worker_id):\n"
        "    info = torch.utils.data.get_worker_info()\n"
        f"    info.dataset.{attr} = np.random.default_rng(info.seed)\n"
        "For numbers that do not change with num_workers, load with "
        "wellfed.create_dataloader(seed=...) and draw from wellfed.sample_rng() / "
        "wellfed.sample_generator() in __getitem__."
    )


def check_worker_init_seeds(ctx: Context) -> list[Finding]:
    """WF108: a worker_init_fn that seeds with constants (all workers identical) or with its
    own arguments only (worker_id: differs by worker, repeats every epoch).
    """
    wif = ctx.settings.get("worker_init_fn")
    if wif is None:
        return []
    calls = seed_calls(wif)
    if not calls:
        return []
    worst = min(calls, key=lambda c: {"constant": 0, "arguments": 1, "runtime": 2}[c.depends_on])
    if worst.depends_on == "runtime":
        return []
    fix = (
        "Derive the seed from the per-worker, per-epoch seed PyTorch gives each worker:\n"
        "def worker_init_fn(worker_id):\n"
        "    seed = torch.initial_seed() % 2**32  # base_seed + worker_id, new every epoch\n"
        "    np.random.seed(seed); random.seed(seed)"
    )
    if worst.depends_on == "constant":
        message = (
            f"worker_init_fn calls {worst.call}(<constant>) (line {worst.line}): every worker "
            "starts from the same seed, so all workers draw identical random numbers, every epoch."
        )
        severity = "error"
    else:
        message = (
            f"worker_init_fn seeds {worst.call}(...) from its own arguments only (line "
            f"{worst.line}), e.g. worker_id: the seeds differ between workers but repeat every "
            "epoch, so each epoch replays the same augmentations."
        )
        severity = "warning"
    f = ctx.finding(
        "WF108",
        severity,
        "loader.worker_init_fn",
        message,
        fix,
        f"static: {worst.call} seeded from {worst.depends_on}",
    )
    return [f] if f is not None else []
