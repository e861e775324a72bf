"""The benchmark suite's smoke run: every workload and every contender runs, or says why not.

It asserts no speed (STYLE.md section 8: CI never asserts absolute speed).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from benchmarks.run import main
from benchmarks.workloads import WORKLOADS

pytestmark = pytest.mark.workers

CONTENDERS = {
    "num_workers=0",
    "cpu_count // 2",
    "Lightning",
    "loadtune",
    "wellfed tune",
    "SPDL",
    "torchdata.nodes",
    "grid best",
}

#: Contenders that are other projects' code: they may be skipped, with their reason.
PEERS = {"loadtune", "SPDL", "torchdata.nodes"}


@pytest.mark.timeout(400)
def test_smoke_run_covers_every_workload_and_contender(tmp_path: Path) -> None:
    assert set(WORKLOADS) == {
        "jpeg",
        "io-latency",
        "in-memory",
        "text",
        "model-in-dataset",
        "iterable",
    }
    assert main(["--smoke", "--out", str(tmp_path), "--tag", "test", "--quiet"]) == 0
    lines = (tmp_path / "suite_test.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert records[0]["record"] == "run"
    assert records[-1]["record"] == "end"
    assert records[0]["env"]["usable_cpus"] >= 1
    assert "git_sha" in records[0]["env"]
    workloads = {r["workload"]: r for r in records if r["record"] == "workload"}
    assert set(workloads) == set(WORKLOADS)
    for name, summary in workloads.items():
        rows = {
            r["contender"]: r
            for r in records
            if r["record"] == "contender" and r["workload"] == name
        }
        assert set(rows) >= CONTENDERS, (name, sorted(rows))
        for contender, row in rows.items():
            if row["status"] == "ok":
                assert row["samples_per_s_p50"] is not None, (name, contender)
                assert row["config"] is not None, (name, contender)
                assert row["peak_memory_bytes"], (name, contender)
            else:
                # Only a peer tool may be skipped, and then with its reason.
                assert contender in PEERS, (name, contender, row["status"], row["error"])
                assert row["note"].startswith("skipped"), row["note"]
        assert rows["grid best"]["status"] == "ok", name
        assert rows["wellfed tune"]["tuning_time_s"] > 0
        assert summary["grid_configs"] >= 2
        assert summary["grid_time_s"] > 0
        assert summary["ceiling_samples_per_s"] is not None
        assert summary["wellfed_to_grid_best"] is not None
    assert workloads["iterable"]["check"]["ok"] is True
    # The grid has issue 12's axes: threads on map-style data, batched fetch on in-memory.
    for name, summary in workloads.items():
        comp = summary["grid_composition"]
        assert (comp["thread"] > 0) == (name != "iterable"), (name, comp)
        assert (comp["batched_fetch"] > 0) == (name == "in-memory"), (name, comp)
    assert any(
        r["contender"].startswith("batched fetch")
        for r in records
        if r.get("workload") == "in-memory"
    )
    markdown = (tmp_path / "suite_test.md").read_text()
    for name in WORKLOADS:
        assert f"## {name}" in markdown


@pytest.mark.workers
def test_seeding_overhead_smoke(tmp_path: Path) -> None:
    """The seeding benchmark behind issue 4's figure runs on the current loader (no speed)."""
    from benchmarks.seeding_overhead import main as seeding_main

    out = tmp_path / "seeding.jsonl"
    assert seeding_main(["--smoke", "--out", str(out)]) == 0
    record = json.loads(out.read_text().splitlines()[-1])
    assert record["env"]["git_sha"]


def test_watch_overhead_smoke(tmp_path: Path) -> None:
    """The watch-overhead benchmark runs and records its figures (no speed asserted)."""
    from benchmarks.watch_overhead import main as watch_main

    out = tmp_path / "watch.jsonl"
    assert watch_main(["--smoke", "--steps", "5", "--repeats", "2", "--out", str(out)]) == 0
    record = json.loads(out.read_text().splitlines()[-1])
    assert record["meter_cost_us_per_step"] is not None
    assert record["step_ms"] == 10.0


@pytest.mark.timeout(200)
def test_watch_vs_datapath_doctor_smoke(tmp_path: Path) -> None:
    """One loop under ``wellfed watch`` and wired for datapath-doctor: both verdicts recorded.

    No verdict is asserted for either tool (the machine's load moves the CPU figures), only
    that both ran, were read and were compared.
    """
    pytest.importorskip("datapath_doctor")
    from benchmarks.watch_vs_datapath_doctor import main as vs_main

    assert vs_main(["--only", "decode", "--out", str(tmp_path), "--timeout-s", "150"]) == 0
    records = [
        json.loads(line)
        for line in (tmp_path / "watch_vs_datapath_doctor.jsonl").read_text().splitlines()
    ]
    assert [r["record"] for r in records] == ["run", "loop", "end"]
    loop = records[1]
    assert loop["wellfed"]["exit_code"] == 0
    assert loop["wellfed"]["verdict"]["kind"] in {"data-bound", "not-data-bound"}
    assert loop["datapath_doctor"]["exit_code"] == 0
    assert loop["datapath_doctor"]["steps"] == 24  # 192 samples / batch 8
    assert loop["datapath_doctor"]["documented"]["report"].startswith("datapath-doctor:")
    assert loop["wellfed_vs_documented"].split(" (")[0] in {
        "same",
        "more specific",
        "less specific",
        "different",
    }
    assert "| decode: " in (tmp_path / "watch_vs_datapath_doctor.md").read_text()


def test_watch_vs_datapath_doctor_compares_cause_classes() -> None:
    """The comparison rules of the side-by-side benchmark, on verdicts the test writes."""
    from benchmarks.watch_vs_datapath_doctor import NO_CAUSE, compare, wellfed_classes

    cpu = {
        "kind": "data-bound",
        "causes": [
            {"code": "prefetch-underrun", "summary": ""},
            {"code": "worker-cpu-saturated", "summary": ""},
        ],
    }
    assert wellfed_classes(cpu) == ["CPU-bound loading"]
    symptom = {"kind": "data-bound", "causes": [{"code": "prefetch-underrun", "summary": ""}]}
    assert wellfed_classes(symptom) == [NO_CAUSE]
    assert compare(["CPU-bound loading"], None, NO_CAUSE, 0.8) == "more specific"
    assert compare(["storage"], None, "storage", 0.5) == "same"
    assert compare([NO_CAUSE], None, "storage", 0.5) == "less specific"
    assert compare(["not data-bound"], 1, "not data-bound", 0.02) == "more specific"
    assert compare(["not data-bound"], None, "not data-bound", 0.02) == "same"
    assert compare(["hand-over"], None, "not data-bound", 0.1).startswith("different (thresh")


@pytest.mark.timeout(300)
def test_pipeline_contenders_stop_their_threads_and_exit_cleanly() -> None:
    """SPDL and torchdata.nodes pipelines leave no thread and exit 0 with nothing on stderr.

    A daemon thread still in a torch operation at interpreter exit aborts the process
    ("terminate called without an active exception"); the wrappers join their threads first.
    """
    from benchmarks.pipelines import check_exit

    result = check_exit(repeats=1)
    assert result["ok"], result
