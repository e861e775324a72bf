"""The live probe's runs turned into findings: confirmed, refuted or new.

``apply_probes`` reads what the probe (``_probe``) saw in real workers under each start
method: a worker killed by a signal is WF124 (the signal, the worker, the samples, the likely
cause and fix, as ``WorkerStartError``/``WorkerCrashedError`` name it; SIGBUS also confirms
WF113); a failure to receive the dataset confirms WF101/WF102 (or adds WF101), a CUDA error
WF105/WF106, a shared-memory failure WF113; another crash (a worker's exit code) or a hang is
WF122, a start method the probe could not run WF123 (info). Each exception is reported with
its type and message at the attribute path of its innermost user frame (``_attribution``),
with the category it implies: words in its text only confirm a static finding of that code;
a new WF106 needs a CUDA runtime error, a new WF104 a handle-holding object on the failing
path, a new WF113 a shared-memory failure with /dev/shm free below the batches in flight;
otherwise it is WF122 whose message says "the error suggests <category>"; a hang names
where each worker was blocked, from its stack dump. Identical random samples across workers
confirm WF107, different ones refute it; samples yielded by several workers confirm WF117,
none repeated refute it. Measured sample sizes and pickled size re-judge WF113/WF114 and
WF120; worker memory is noted on WF109/WF110.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from wellfed._worker_death import describe_death, loading_text, signal_from_exitcode
from wellfed.doctor._attribution import (
    CodeIndex,
    Frame,
    Location,
    code_index,
    failure_category,
    frames_from_json,
    is_user_file,
    locate,
)
from wellfed.doctor._checks_rng import rng_fix
from wellfed.doctor._checks_shared_memory import check_shared_memory
from wellfed.doctor._checks_transfer import describe_images, float_images_seen_live
from wellfed.doctor._checks_worker_config import check_pickled_size
from wellfed.doctor._classify import HANDLE_FIXES, is_iterable, mb
from wellfed.doctor._context import Context
from wellfed.doctor._probe import MAIN_TOO
from wellfed.doctor._report import Finding, ProbeRun

__all__ = ["apply_probes"]


#: Innermost user frames an evidence text lists for a failure or a hang.
TRAIL_FRAMES = 3


def _confirm(f: Finding, method: str, what: str) -> Finding:
    if f"confirmed live ({method})" in f.evidence:
        return f
    return dataclasses.replace(f, evidence=f"confirmed live ({method}): {what}; {f.evidence}")


Update = Callable[[tuple[str, ...], str, str], bool]


def apply_probes(ctx: Context, findings: list[Finding], probes: list[ProbeRun]) -> list[Finding]:
    """Confirm, refute or add findings from what the live probe saw."""
    out = list(findings)
    path_code = (
        "type(dataset).__iter__" if is_iterable(ctx.dataset) else "type(dataset).__getitem__"
    )

    def update(codes: tuple[str, ...], method: str, what: str) -> bool:
        hit = False
        for i, f in enumerate(out):
            if f.code in codes and method in f.start_methods:
                out[i] = _confirm(f, method, what)
                hit = True
        return hit

    index: CodeIndex | None = None  # the walked code objects, built at the first failure

    # start methods under which workers died by each signal (one finding names them all)
    killed_under: dict[str, list[str]] = {}
    for run in probes:
        death = _signal_death(run)
        if death is not None:
            killed_under.setdefault(str(death["signal"]), []).append(run.start_method)

    for run in probes:
        m = run.start_method
        if run.status == "not_probed":
            reason = _first_line(run.error or "no reason given")
            note = f"not probed ({m}): {reason}"
            for i, old in enumerate(out):
                if m in old.start_methods and note not in old.evidence:
                    out[i] = dataclasses.replace(old, evidence=f"{old.evidence}; {note}")
            f = ctx.finding(
                "WF123",
                "info",
                "env.live_probe",
                f"The live probe did not run under {m}: {reason}. Findings for {m} are the "
                "static checks' only, neither confirmed nor refuted in real workers.",
                "Nothing to fix in the dataset for this. To probe anyway, run `wellfed doctor` "
                "in a process that has not initialised CUDA (fork is then possible), or make "
                "the dataset picklable.",
                note,
                (m,),
            )
            if f is not None:
                out.append(f)
            continue
        if run.status != "ok":
            error = run.error or ""
            first = _first_line(error)
            death = run.observations.get("worker_death") or run.observations.get("process_death")
            signalled = _signal_death(run)
            if signalled is not None:
                f = _death_finding(
                    ctx, run, signalled, path_code, killed_under[str(signalled["signal"])]
                )
                if f is not None:
                    if f.path == "env.dev_shm":
                        update(("WF113",), m, f"a worker was killed by SIGBUS ({first[:120]})")
                    out.append(f)
                continue
            if death is not None:  # a worker exited with an error code: named, unexplained
                f = ctx.finding(
                    "WF122",
                    "error",
                    path_code,
                    f"Workers crashed under {m} in the live probe: {_death_text(death)}: "
                    f"{death.get('cause')}.",
                    _sentence(str(death.get("fix", "")))[:-1] + "; fix the findings listed "
                    "for this start method first.",
                    f"confirmed live ({m}): {run.status} after {run.elapsed_s:.1f} s; "
                    + _torch_said(str(death.get("message", ""))),
                    (m,),
                )
                if f is not None:
                    out.append(f)
                continue
            if index is None:
                index = code_index(ctx)
            out.extend(_failure_findings(ctx, out, run, path_code, index, update))
            continue
        obs = run.observations
        if obs.get("kind") == "map" and obs.get("main_random"):
            if obs.get("workers_identical"):
                what = "workers returned identical random samples for index 0 in every repeat"
                if not update(("WF107", "WF108"), m, what):
                    f = ctx.finding(
                        "WF107",
                        "error",
                        "dataset",
                        "Every worker returns the same random augmentation: the workers share "
                        "one RNG state (an RNG object or a seed copied into each).",
                        rng_fix("rng", ctx.settings.get("seed") is not None),
                        f"confirmed live ({m}): {what}",
                        (m,),
                    )
                    if f is not None:
                        out.append(f)
            elif obs.get("workers_differ"):
                out = _refute(
                    out,
                    ("WF107",),
                    m,
                    "workers returned different random samples for index 0",
                    "warning",
                )
        if obs.get("kind") == "iterable":
            dup = int(obs.get("duplicate_samples", 0))
            per_worker = obs.get("items_per_worker", {})
            if dup > 0:
                what = f"{dup} sample(s) yielded by more than one worker ({per_worker})"
                if not update(("WF117",), m, what) and (ctx.num_workers or 2) > 1:
                    f = ctx.finding(
                        "WF117",
                        "error",
                        "type(dataset).__iter__",
                        "Several workers yield the same samples: the stream is not split "
                        "per worker.",
                        "Split by torch.utils.data.get_worker_info() in __iter__ "
                        "(if i % info.num_workers == info.id: yield item).",
                        f"confirmed live ({m}): {what}",
                        (m,),
                    )
                    if f is not None:
                        out.append(f)
            elif len(per_worker) > 1:
                out = _refute(
                    out, ("WF117",), m, f"no sample repeated across workers ({per_worker})", "info"
                )
        sample_s = obs.get("main_sample_s")
        if isinstance(sample_s, (int, float)):
            update(
                ("WF126",),
                m,
                f"one sample took {sample_s * 1e3:.1f} ms in the probe's main process (mean "
                "of its repeated fetches of one index), model included; every worker pays it "
                "per sample",
            )
        images = obs.get("float_images")
        if images:
            seen = describe_images(images)
            if not update(("WF125",), m, f"the workers' first batch holds {seen}"):
                out.extend(float_images_seen_live(ctx, images, m, path_code))
        sample_bytes = obs.get("sample_bytes")
        if sample_bytes and not any(f.code == "WF113" for f in out):
            out.extend(
                check_shared_memory(
                    ctx,
                    (int(sample_bytes), int(obs.get("tensors_per_sample", 0))),
                    f"confirmed live ({m}): measured batch of 1 sample",
                )
            )
        if "pickled_bytes" in obs:
            measured = (
                int(obs["pickled_bytes"]),
                float(obs["pickle_s"]),
                float(obs.get("unpickle_s", 0.0)),
            )
            live_size = check_pickled_size(ctx, measured)
            out = [f for f in out if f.code != "WF120"] + live_size
        first_uss, last_uss = obs.get("worker_uss_first_bytes"), obs.get("worker_uss_last_bytes")
        if first_uss and last_uss:
            note = (
                f"live ({m}): worker private memory {mb(max(first_uss))} -> "
                f"{mb(max(last_uss))} over {run.batches} batches"
            )
            for i, f in enumerate(out):
                if f.code in ("WF109", "WF110") and m in f.start_methods and note not in f.evidence:
                    out[i] = dataclasses.replace(f, evidence=f"{f.evidence}; {note}")
    return out


def _failure_findings(
    ctx: Context,
    out: list[Finding],
    run: ProbeRun,
    path_code: str,
    index: CodeIndex,
    update: Update,
) -> list[Finding]:
    """The findings of a run that raised or hung (no worker killed or exited): the category
    its exception implies, at the attribute path of the innermost user frame; for a hang,
    where each worker was blocked. Existing findings it confirms are updated in ``out``."""
    m = run.start_method
    error = run.error or ""
    first = _first_line(error)
    raw = run.observations.get("failure")
    failure: dict[str, Any] = raw if isinstance(raw, dict) else {}
    main_raw = failure.get("main")
    main: dict[str, Any] = main_raw if isinstance(main_raw, dict) else {}
    loc = locate(frames_from_json(failure.get("frames")), index) if failure else None
    if loc is None and main:
        loc = locate(frames_from_json(main.get("frames")), index)
    at = loc.path if loc is not None and loc.path else path_code
    said = _said(failure) if failure else _exception_lines(error)
    named = _named(failure, loc) if failure else first
    new: list[Finding | None] = []
    hang = (
        run.status == "timeout"
        or failure.get("type") == "WorkerTimeoutError"
        or ("timed out" in error and not failure)
    )
    if hang:
        new.append(_hang_finding(ctx, out, run, path_code, index))
        return [f for f in new if f is not None]
    if MAIN_TOO in error:
        # Not a worker hazard: the main process reproduces it, so it confirms nothing that a
        # finding about workers claims (issue 15).
        messages = _exception_lines(error)
        line = next(ln for ln in messages.splitlines() if MAIN_TOO in ln)
        line = line.split(": ", 1)[-1] if line.startswith("RuntimeError: ") else line
        note = f"no live evidence ({m}), the failure is not the workers': {line[:300]}"
        for i, old in enumerate(out):
            if m in old.start_methods and note not in old.evidence:
                out[i] = dataclasses.replace(old, evidence=f"{old.evidence}; {note}")
        shown = _named(main or failure, loc) if (main or failure) else line
        fix = (
            f"Fix the error itself first, at {loc.frame.place} in {loc.qualname} (the "
            f"workers reach it as {at}): it is not caused by the workers; load one batch with "
            "num_workers=0 to see its traceback."
            if loc is not None
            else "Fix the error itself first: call dataset[i] in the main process "
            "(num_workers=0) to see its traceback; it is not caused by the workers."
        )
        new.append(
            ctx.finding(
                "WF122",
                "error",
                at,
                f"Loading fails under {m} with or without workers: {shown[:400]}.",
                fix,
                f"live ({m}): the same sample {MAIN_TOO} (num_workers=0)"
                + _trail(frames_from_json((main or failure).get("frames"))),
                (m,),
            )
        )
        return [f for f in new if f is not None]
    category = failure_category(
        str(failure.get("type", "")), str(failure.get("message", "")) if failure else said, m
    )
    what = (named or first)[:400]
    if category == "unpicklable":
        if not update(("WF101", "WF102"), m, what):
            new.append(
                ctx.finding(
                    "WF101",
                    "error",
                    "dataset",
                    f"Workers failed to receive the dataset under {m}: {what}.",
                    "Find the object named in the error and make it picklable: module-level "
                    "functions and classes, no open handles (open them lazily in "
                    "__getitem__).",
                    f"confirmed live ({m}): {what}",
                    (m,),
                )
            )
        return [f for f in new if f is not None]
    message = str(failure.get("message", "")) if failure else said
    suggests = ""  # "<category> (<what it would be>), but <what is missing>": WF122's hint
    if category == "cuda-in-worker":
        if update(("WF105", "WF106"), m, what):
            return []
        if _cuda_runtime_error(message):
            new.append(
                ctx.finding(
                    "WF106",
                    "error",
                    at,
                    f"A worker failed with a CUDA error under {m} in the live probe: {what}. "
                    "Worker code uses CUDA, which a forked worker cannot initialise and "
                    "every spawned worker pays a context for.",
                    "Return CPU tensors from worker code and move each batch in the training "
                    'loop: batch.to("cuda", non_blocking=True) with pin_memory=True.',
                    f"confirmed live ({m}): {said[:300]}" + _trail(_frames(failure)),
                    (m,),
                )
            )
            return [f for f in new if f is not None]
        suggests = (
            "cuda-in-worker (CUDA used in worker code), but it is not a CUDA runtime error "
            "and no static finding says worker code uses CUDA"
        )
    elif category == "fork-shared-handle":
        if update(("WF104",), m, what):
            return []
        holder = _handle_on_path(ctx, at)
        if holder is not None:
            hpath, kind = holder
            new.append(
                ctx.finding(
                    "WF104",
                    "error",
                    hpath,
                    f"A worker's read through a file handle failed under {m} in the live "
                    f"probe: {what}. {hpath} ({kind}), opened before the workers started, "
                    "is shared by all of them: one descriptor and one file offset.",
                    "Store the path and open the handle lazily, once per worker:\n"
                    + HANDLE_FIXES["open file"],
                    f"confirmed live ({m}): {said[:300]}; {hpath} holds {kind} on the failing "
                    f"path {at}" + _trail(_frames(failure)),
                    (m,),
                )
            )
            return [f for f in new if f is not None]
        suggests = (
            "fork-shared-handle (a file handle shared by forked workers), but no object "
            f"holding a handle is on the failing path {at}: the file itself may be corrupt"
        )
    elif category == "shared-memory":
        if update(("WF113",), m, what):
            return []
        short = _shm_short(ctx, run, message)
        if short.startswith("/dev/shm"):
            new.append(
                ctx.finding(
                    "WF113",
                    "error",
                    "env.dev_shm",
                    f"Workers died under {m} with a shared-memory failure: {what}.",
                    "Lower prefetch_factor, num_workers or batch_size, or give the container "
                    "more shared memory: docker run --shm-size=8g.",
                    f"confirmed live ({m}): {what}; {short}",
                    (m,),
                )
            )
            return [f for f in new if f is not None]
        suggests = f"shared-memory (/dev/shm exhausted), but {short}"
    suspects = [f.path for f in out if f.severity == "error" and m in f.start_methods]
    first_fix = (
        f"Fix the {failure.get('type') or 'error'} at {loc.frame.place} in {loc.qualname}, "
        f"which the workers reach as {at}"
        + (
            f"; fix the findings listed for this start method first ({', '.join(suspects[:3])})"
            if suspects
            else ""
        )
        if loc is not None
        else "Run with num_workers=0 to see the error in the main process; fix the findings "
        "listed for this start method first" + (f" ({', '.join(suspects[:3])})" if suspects else "")
    )
    wid = failure.get("worker_id")
    new.append(
        ctx.finding(
            "WF122",
            "error",
            at,
            f"Workers crashed under {m} in the live probe: {what}."
            + (f" The error suggests {suggests}." if suggests else ""),
            first_fix + ".",
            f"confirmed live ({m}): {run.status} after {run.elapsed_s:.1f} s; "
            + (f"in DataLoader worker process {wid}: " if wid is not None else "")
            + (said[:300] if failure else _last_line(error))
            + _trail(_frames(failure)),
            (m,),
        )
    )
    return [f for f in new if f is not None]


def _hang_finding(
    ctx: Context, out: list[Finding], run: ProbeRun, path_code: str, index: CodeIndex
) -> Finding | None:
    """WF122 for a run that hung: where each worker was blocked (its stack dump), when the
    probe could dump them; the path is the innermost user frame's."""
    m = run.start_method
    error = run.error or ""
    blocked: list[tuple[list[int], list[int], Location | None, list[Frame]]] = []
    for dump in run.observations.get("hang_dumps") or []:
        threads = [
            (bool(t.get("current")), frames_from_json(t.get("frames")))
            for t in dump.get("threads", [])
        ]
        threads.sort(key=lambda t: not t[0])  # the thread that took the signal first
        located = [(locate(frames, index), frames) for _, frames in threads]
        loc, frames = next(
            ((lc, fr) for lc, fr in located if lc is not None),
            (None, threads[0][1] if threads else []),
        )
        key = None if loc is None else (loc.frame, loc.call)
        for wids, pids, other, _ in blocked:
            if other is not None and (other.frame, other.call) == key:
                wids.append(int(dump.get("worker_id", -1)))
                pids.append(int(dump.get("pid", -1)))
                break
        else:
            blocked.append(
                ([int(dump.get("worker_id", -1))], [int(dump.get("pid", -1))], loc, frames)
            )
    parts = []
    for wids, pids, loc, frames in blocked:
        who = (
            f"DataLoader worker {wids[0]} (pid {pids[0]}) was"
            if len(wids) == 1
            else f"DataLoader workers {_and(wids)} (pids {', '.join(map(str, pids))}) were"
        )
        if loc is not None:
            parts.append(f"{who} blocked in {loc.blocked_in()}")
        elif frames:
            f = frames[-1]
            parts.append(f"{who} blocked outside user code, in {f.name} ({f.place})")
    path = next((lc.path for _, _, lc, _ in blocked if lc is not None and lc.path), path_code)
    first_loc = next((lc for _, _, lc, _ in blocked if lc is not None), None)
    suspects = [f.path for f in out if f.severity == "error" and m in f.start_methods]
    look = (
        f"Make the call at {first_loc.frame.place} in {first_loc.qualname} return in a "
        "worker: a lock, queue, event, socket or pipe waited on without a timeout never "
        "returns when nothing in that worker can release it (fork copies a held lock, never "
        "the thread that would release it); "
        if first_loc is not None
        else "Run with num_workers=0 to see whether it hangs without workers too; "
    )
    trail = "".join(
        f"; worker {wids[0]} stack, innermost first: " + _stack(frames)
        for wids, _, _, frames in blocked
        if frames
    )
    return ctx.finding(
        "WF122",
        "error",
        path,
        f"Workers hung under {m} in the live probe (no batch before the deadline; killed)"
        + (": " + "; ".join(parts) if parts else "")
        + ".",
        look
        + "fix the findings listed for this start method first"
        + (f" ({', '.join(suspects[:3])})" if suspects else "")
        + "; look for locks or thread pools created before the workers.",
        f"confirmed live ({m}): {run.status} after {run.elapsed_s:.1f} s; "
        + (_last_line(error) or "no output")
        + trail,
        (m,),
    )


def _said(facts: dict[str, Any]) -> str:
    """``ValueError: record 0: checksum mismatch`` from an exception's facts (one line)."""
    kind = str(facts.get("type") or "Exception")
    message = " ".join(str(facts.get("message") or "").split())
    return f"{kind}: {message}" if message else kind


def _named(facts: dict[str, Any], loc: Location | None) -> str:
    """The exception and where it was raised: ``ZeroDivisionError: division by zero, raised
    in StdCollate.__call__ (datasets.py:765)``."""
    said = _said(facts)
    said = said if len(said) <= 300 else said[:300] + " ..."
    return f"{said}, raised in {loc.raised_in()}" if loc is not None else said


def _frames(facts: dict[str, Any]) -> list[Frame]:
    return frames_from_json(facts.get("frames")) if facts else []


def _trail(frames: list[Frame]) -> str:
    """``; user frames, innermost first: datasets.py:782 in read `raise ...` <- ...``."""
    users = [f for f in frames if is_user_file(f.filename)][-TRAIL_FRAMES:]
    if not users:
        return ""
    return "; user frames, innermost first: " + " <- ".join(_frame_text(f) for f in users[::-1])


def _stack(frames: list[Frame]) -> str:
    """The innermost TRAIL_FRAMES + 1 frames of a dumped stack, innermost first."""
    return " <- ".join(_frame_text(f) for f in frames[::-1][: TRAIL_FRAMES + 1])


def _frame_text(f: Frame) -> str:
    src = f.source
    return f"{f.place} in {f.name}" + (f" `{src[:80]}`" if src else "")


def _and(items: list[int]) -> str:
    words = [str(i) for i in items]
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + f" and {words[-1]}"


def _last_line(error: str) -> str:
    return error.strip().splitlines()[-1][:300] if error.strip() else ""


def _refute(
    findings: list[Finding], codes: tuple[str, ...], method: str, what: str, downgrade_to: str
) -> list[Finding]:
    out = []
    for f in findings:
        if f.code in codes and method in f.start_methods and f.severity == "error":
            f = dataclasses.replace(
                f,
                severity=downgrade_to,
                evidence=f"not reproduced live ({method}): {what}; {f.evidence}",
            )
        out.append(f)
    return out


def _death_text(death: dict[str, Any]) -> str:
    """ "DataLoader worker 0 (pid 4711) was killed by SIGSEGV before the first batch, loading
    samples [3]", from a worker's death facts (the probe's isolated process: "the probe's
    process was killed by SIGSEGV")."""
    sig = death.get("signal")
    if death.get("pid") is None and "worker_id" not in death:
        how = f"was killed by {sig}" if sig else f"exited with code {death.get('exitcode')}"
        return f"the probe's own process (where the dataset is pickled and fetched once) {how}"
    wid = death.get("worker_id")
    who = (
        f"DataLoader worker {wid} (pid {death.get('pid')})"
        if wid is not None
        else (f"DataLoader worker (pid {death.get('pid')})")
    )
    how = f"was killed by {sig}" if sig else f"exited with code {death.get('exitcode')}"
    delivered = death.get("batches_delivered")
    when = (
        ""
        if delivered is None
        else (" before the first batch" if delivered == 0 else f" after {delivered} batch(es)")
    )
    return f"{who} {how}{when}{loading_text(death.get('undelivered'))}"


def _torch_said(message: str) -> str:
    said = message.partition("PyTorch said: ")[2]
    return ("PyTorch said: " + said.rsplit(" [WF", 1)[0].strip()) if said else message[:300]


def _signal_death(run: ProbeRun) -> dict[str, Any] | None:
    """The death facts of a run whose worker (or own process) a signal killed, with
    ``signal`` set; None for any other run."""
    if run.status == "ok":
        return None
    death = run.observations.get("worker_death") or run.observations.get("process_death")
    if not isinstance(death, dict):
        return None
    sig = death.get("signal") or signal_from_exitcode(death.get("exitcode"))
    return {**death, "signal": sig} if sig else None


#: How a CUDA runtime error's message begins or what it says (torch's own wording).
_CUDA_RUNTIME = (
    "CUDA error",
    "Cannot re-initialize CUDA in forked subprocess",
    "CUDA out of memory",
    "CUDA driver initialization failed",
    "Found no NVIDIA driver",
)

#: Wording of a failure to allocate or map shared memory (torch's "unable to write to file
#: </torch_...>", a bus error), not of any full disk.
_SHM_FAILURE = ("Bus error", "SIGBUS", "unable to write to file </torch_", "/dev/shm", "shm")


def _cuda_runtime_error(message: str) -> bool:
    """Whether an exception's message is a CUDA runtime error (not a word "cuda" in it)."""
    text = message.strip()
    return text.startswith("CUDA error") or any(w in text for w in _CUDA_RUNTIME)


def _handle_on_path(ctx: Context, at: str) -> tuple[str, str] | None:
    """(path, kind) of an object holding an OS handle on the failing path ``at``: under the
    object whose method failed (``dataset`` for ``type(dataset).__getitem__``,
    ``dataset.reader`` for ``dataset.reader.read``), as the walk found it; else None."""
    from wellfed.doctor._classify import handle_kind

    owner = at
    if owner.startswith("type(") and ")" in owner:
        owner = owner[len("type(") : owner.index(")")]
    elif "." in owner:
        owner = owner.rsplit(".", 1)[0]
    for node in ctx.worker_nodes():
        if node.path == owner or node.path.startswith((f"{owner}.", f"{owner}[")):
            kind = handle_kind(node.obj)
            if kind is not None:
                return node.path, kind[0]
    return None


def _shm_short(ctx: Context, run: ProbeRun, message: str) -> str:
    """ "/dev/shm ..." evidence when the failure is a shared-memory one and the batches in
    flight exceed free /dev/shm; else what is missing ("the text ...", "... free")."""
    if not any(w in message for w in _SHM_FAILURE):
        return "the error does not name shared memory (a full disk says the same)"
    free = ctx.platform.shm_free_bytes
    sample = run.observations.get("sample_bytes")
    if free is None or not sample:
        return "the free /dev/shm or the sample size is not known"
    nw = ctx.num_workers or 2
    batch = int(ctx.settings.get("batch_size") or 1)
    prefetch = int(ctx.settings.get("prefetch_factor") or 2)
    in_flight = int(sample) * batch * prefetch * nw
    if in_flight <= free:
        return f"batches in flight (~{mb(in_flight)}) fit in the free /dev/shm ({mb(free)})"
    return f"/dev/shm has {mb(free)} free, below the ~{mb(in_flight)} of batches in flight"


def _death_finding(
    ctx: Context,
    run: ProbeRun,
    death: dict[str, Any],
    path_code: str,
    methods: list[str],
) -> Finding | None:
    """WF124: a worker (or the probe's own process) was killed by a signal.

    ``methods`` are the start methods under which workers died by the same signal: when a
    spawn or forkserver worker died too, the cause is not fork's, and neither is the fix.
    """
    m = run.start_method
    sig = str(death["signal"])
    not_fork = any(x in ("spawn", "forkserver") for x in methods)
    if "cause" not in death or (not_fork and sig in ("SIGSEGV", "SIGABRT")):
        # the probe's own process, or a crash spawn shares: described here, from the exit code
        report = describe_death(
            exitcode=death.get("exitcode"),
            signal_name=sig,
            start_method="spawn" if not_fork else m,
        )
        death = {**death, "cause": report.cause, "fix": report.fix}
    elif sig in ("SIGKILL", "SIGBUS"):
        # the probe ran 2 workers of its own: the fix names the user's settings
        pf = ctx.settings.get("prefetch_factor")
        report = describe_death(
            exitcode=death.get("exitcode"),
            signal_name=sig,
            num_workers=ctx.num_workers,
            prefetch_factor=pf if isinstance(pf, int) else None,
        )
        death = {**death, "fix": report.fix}
    under = ", ".join(methods[:-1]) + f" and {methods[-1]}" if len(methods) > 1 else m
    detail = f" ({m}: {_death_text(death)})" if len(methods) > 1 else f": {_death_text(death)}"
    return ctx.finding(
        "WF124",
        "error",
        "env.dev_shm" if sig == "SIGBUS" else path_code,
        f"A worker was killed by {sig} in the live probe under {under}{detail}: "
        f"{death.get('cause')}.",
        _sentence(str(death.get("fix") or "")),
        f"confirmed live ({m}): exit code {death.get('exitcode')} ({sig}) after "
        f"{run.elapsed_s:.1f} s; " + _torch_said(str(death.get("message", ""))),
        (m,),
    )


def _sentence(text: str) -> str:
    """``text`` with a capital first letter and a final full stop."""
    text = text.strip().rstrip(".")
    return text[:1].upper() + text[1:] + "."


def _exception_lines(error: str) -> str:
    """The lines of an error text that state exceptions, not a traceback's frames and source
    (whose words, e.g. a variable called ``measure_pickle``, say nothing about the cause)."""
    return "\n".join(
        line
        for line in error.splitlines()
        if line.strip() and not line.startswith((" ", "\t", "Traceback (most recent call"))
    )


def _first_line(error: str) -> str:
    for line in error.strip().splitlines():
        if line.strip():
            return line.strip()[:300]
    return "no error text"
