"""The live probe's runs turned into findings: confirmed, refuted or new.

``apply_probes`` reads what the probe (``_probe``) saw in real workers under each start
method: a worker killed by a signal is WF124 (the signal, the worker, the samples, the likely
cause and fix, as ``WorkerStartError``/``WorkerCrashedError`` name it; SIGBUS also confirms
WF113); a failure to receive the dataset confirms WF101/WF102 (or adds WF101), a CUDA error
WF105/WF106, a shared-memory failure WF113; another crash (a worker's exit code) or a hang is
WF122, a start method the probe could not run WF123 (info). Identical random samples across
workers confirm WF107, different ones refute it; samples yielded by several workers confirm
WF117, none repeated refute it. Measured sample sizes and pickled size re-judge WF113/WF114
and WF120; worker memory is noted on WF109/WF110.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from wellfed._worker_death import describe_death, loading_text, signal_from_exitcode
from wellfed.doctor._checks_rng import rng_fix
from wellfed.doctor._checks_shared_memory import check_shared_memory
from wellfed.doctor._checks_worker_config import check_pickled_size
from wellfed.doctor._classify import is_iterable, mb
from wellfed.doctor._context import Context
from wellfed.doctor._probe import MAIN_TOO
from wellfed.doctor._report import Finding, ProbeRun

__all__ = ["apply_probes"]


#: Words in a failed run's error that name its cause: pickling, CUDA, shared memory.
_PICKLE_MARKERS = ("pickle", "Can't get attribute", "can't get attribute", "Can't pickle")
_CUDA_MARKERS = ("CUDA", "cuda")
_SHM_MARKERS = ("Bus error", "SIGBUS", "No space left on device", "shared memory", "shm")


def _confirm(f: Finding, method: str, what: str) -> Finding:
    if f"confirmed live ({method})" in f.evidence:
        return f
    return dataclasses.replace(f, evidence=f"confirmed live ({method}): {what}; {f.evidence}")


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
            messages = _exception_lines(error)
            if MAIN_TOO in messages:
                # Not a worker hazard: the main process reproduces it, so it confirms nothing
                # that a finding about workers claims (issue 15).
                line = next(ln for ln in messages.splitlines() if MAIN_TOO in ln)
                line = line.split(": ", 1)[-1] if line.startswith("RuntimeError: ") else line
                note = f"no live evidence ({m}), the failure is not the workers': {line[:300]}"
                for i, old in enumerate(out):
                    if m in old.start_methods and note not in old.evidence:
                        out[i] = dataclasses.replace(old, evidence=f"{old.evidence}; {note}")
                f = ctx.finding(
                    "WF122",
                    "error",
                    path_code,
                    f"Loading fails under {m} with or without workers: {line[:300]}.",
                    "Fix the error itself first: call dataset[i] in the main process "
                    "(num_workers=0) to see its traceback; it is not caused by the workers.",
                    f"live ({m}): the same sample {MAIN_TOO} (num_workers=0)",
                    (m,),
                )
                if f is not None:
                    out.append(f)
                continue
            if any(k in messages for k in _PICKLE_MARKERS) and m != "fork":
                if not update(("WF101", "WF102"), m, first):
                    f = ctx.finding(
                        "WF101",
                        "error",
                        "dataset",
                        f"Workers failed to receive the dataset under {m}: {first}.",
                        "Find the object named in the error and make it picklable: module-level "
                        "functions and classes, no open handles (open them lazily in "
                        "__getitem__).",
                        f"confirmed live ({m}): {first}",
                        (m,),
                    )
                    if f is not None:
                        out.append(f)
                continue
            if any(k in messages for k in _CUDA_MARKERS) and update(("WF105", "WF106"), m, first):
                continue
            if any(k in messages for k in _SHM_MARKERS):
                if not update(("WF113",), m, first):
                    f = ctx.finding(
                        "WF113",
                        "error",
                        "env.dev_shm",
                        f"Workers died under {m} with a shared-memory failure: {first}.",
                        "Lower prefetch_factor, num_workers or batch_size, or give the container "
                        "more shared memory: docker run --shm-size=8g.",
                        f"confirmed live ({m}): {first}",
                        (m,),
                    )
                    if f is not None:
                        out.append(f)
                continue
            hang = run.status == "timeout" or "timed out" in error
            suspects = [f.path for f in out if f.severity == "error" and m in f.start_methods]
            what = "hung (no batch before the deadline; killed)" if hang else f"crashed: {first}"
            f = ctx.finding(
                "WF122",
                "error",
                path_code,
                f"Workers {what} under {m} in the live probe.",
                "Run with num_workers=0 to see the error in the main process; fix the findings "
                "listed for this start method first"
                + (f" ({', '.join(suspects[:3])})" if suspects else "")
                + "; for hangs, look for locks or thread pools created before the workers.",
                f"confirmed live ({m}): {run.status} after {run.elapsed_s:.1f} s; "
                + (error.strip().splitlines()[-1][:300] if error.strip() else "no output"),
                (m,),
            )
            if f is not None:
                out.append(f)
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
