"""Static checks of the category 'rng-duplication'.

RNG objects copied with their state into every worker (WF107), and worker_init_fn seeds
that repeat across workers or epochs (WF108).
"""

from __future__ import annotations

from wellfed.doctor._classify import pretty_type, rng_kind, source_text
from wellfed.doctor._context import Context
from wellfed.doctor._report import Finding
from wellfed.doctor._source import analyze_class, is_user_code, seed_calls

__all__ = [
    "check_rng",
    "check_worker_init_seeds",
    "rng_fix",
]


def check_rng(ctx: Context) -> list[Finding]:
    """WF107: RNG objects held by the dataset, transforms or collate_fn (global RNGs excluded).

    An RNG object is copied with its state into every worker (fork copies memory; spawn
    pickles the state), so all workers draw the same numbers. Not reported when
    worker_init_fn or worker code visibly reseeds that attribute.
    """
    out: list[Finding] = []
    wif = ctx.settings.get("worker_init_fn")
    wif_text = source_text(wif)
    seeded = ctx.settings.get("seed") is not None
    for node in ctx.worker_nodes():
        kind = rng_kind(node.obj)
        if kind is None:
            continue
        if node.attr and wif_text and node.attr in wif_text:
            continue  # worker_init_fn replaces or reseeds it per worker
        owner = node.owner
        if owner is not None and node.attr and is_user_code(type(owner)):
            ana = analyze_class(type(owner))
            if node.attr in ana.mutations:
                continue  # worker code reassigns it (per-sample or per-worker seeding)
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
    return out


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
