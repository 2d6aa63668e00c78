"""The benchmark, run small, so that it cannot silently break."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from benchmark_harness import Stats
from performance_benchmark import SECTIONS

ROOT = Path(__file__).resolve().parent.parent


def test_quick_benchmark_runs_every_section_and_writes_its_numbers(tmp_path: Path):
    results_file = tmp_path / "results.json"
    # No real model, no server and no keys of the user's, whatever .env says: the benchmark
    # turns encryption on for a row of its own.
    env = {
        **os.environ,
        "LLM_MODEL": "",
        "TEMPORAL_ADDRESS": "",
        "ENCRYPTION_KEYS": "",
        "ENCRYPTION_KEY_ID": "",
    }
    command = ["performance_benchmark.py", "--quick", "--iterations", "3", "--json", results_file]
    run = subprocess.run(
        [sys.executable, *command],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )

    assert run.returncode == 0, run.stderr[-3000:]
    results = json.loads(results_file.read_text())
    assert results["failures"] == []
    assert list(results["sections"]) == list(SECTIONS)
    table2 = results["sections"]["table2"]["modes"]
    assert table2["durable, scripted model"]["plain"]["n"] == 3
    assert table2["durable, scripted model"]["tool"]["n"] == 3
    tokens = results["sections"]["table2"]["tokens_per_turn"]["durable, scripted model"]
    assert tokens["tool"] > tokens["plain"] > 0  # two model calls against one
    assert table2["in-memory, scripted model"]["plain"]["p50"] > 0
    assert table2["durable, scripted model, streamed"]["plain"]["n"] == 3
    floor = "bare Temporal: update + 1 / 3 no-op activities (the floor)"
    assert table2[floor]["tool"]["n"] == 3
    assert set(results["sections"]["table2"]["excess"]) == {"plain", "tool"}
    for switched_on in ("traces on", "encryption on"):
        assert table2[f"durable, scripted model, {switched_on}"]["tool"]["n"] == 3
    mcp = table2["durable, scripted model, MCP stdio server"]
    assert mcp["built-in tool"]["n"] == mcp["MCP tool"]["n"] == 3
    assert "hop_ms" in results["sections"]["table2"]["mcp_hop"]
    throughput = results["sections"]["throughput"]["results"]
    assert {r["system"] for r in throughput} == {"durable agent", "bare Temporal"}
    assert all(r["worker_cpu_ms_per_turn"] > 0 for r in throughput)
    recovery = results["sections"]["recovery"]
    assert recovery["plan_next_action_runs"] == recovery["turns"]
    assert results["sections"]["long"]["runs"] > 1  # it did continue as new
    rows = {(r["way"], r["cities"]): r for r in results["sections"]["programs"]["rows"]}
    assert {cities for _, cities in rows} == {4, 8, 16}
    assert rows["one call per reply", 16]["model_calls"] == 17  # a round trip per city
    assert rows["all calls in one reply", 16]["model_calls"] == 2
    assert rows["a program", 16]["model_calls"] == 2
    assert rows["a program", 16]["tokens_sent"] < rows["all calls in one reply", 16]["tokens_sent"]
    program_goals = [g for g in results["goals"] if g["name"].startswith("programs: ")]
    assert len(program_goals) == 3 and program_goals[0]["met"]  # at most 2 model calls
    assert {goal["name"] for goal in results["goals"]}
    assert "## 1. Table 2" in run.stdout and "## Goals" in run.stdout


def test_scale_section_runs_small_and_reports_every_part_on_both_servers(tmp_path: Path):
    results_file = tmp_path / "results.json"
    # A cache of 8 conversations, so that 12 idle ones push the deep ones out of it.
    env = {**os.environ, "LLM_MODEL": "", "TEMPORAL_ADDRESS": "", "WORKFLOW_CACHE_SIZE": "8"}
    command = [
        "performance_benchmark.py",
        "--sections",
        "scale",
        "--scale-conversations",
        "12",
        "--iterations",
        "3",
        "--json",
        results_file,
    ]
    run = subprocess.run(
        [sys.executable, *command], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )

    assert run.returncode == 0, run.stderr[-3000:]
    results = json.loads(results_file.read_text())
    assert results["failures"] == []  # every reply right, every note written once
    scale = results["sections"]["scale"]
    assert list(scale["servers"]) == ["in memory", "on disk (SQLite)"]
    for label, found in scale["servers"].items():
        assert found["idle"][-1]["conversations"] == 12
        assert found["idle"][-1]["cached"] == 8  # the cache holds no more
        assert found["idle"][-1]["worker_rss_bytes"] > 0 < found["idle"][-1]["server_rss_bytes"]
        assert list(found["cold"]) == ["cached", "evicted", "after restart"]
        for kind in ("evicted", "after restart"):
            assert all(row["cold_ms"] and row["cached_ms"] for row in found["cold"][kind].values())
        assert [row["turn"] for row in found["memory"]] == [10, 100]  # 10 and 1 000 in full
        waiting = found["waiting"]
        assert waiting["notes_written_once"] == waiting["conversations"] == 8
        [busy] = found["busy"]
        assert busy["agent"]["turns"] == busy["floor"]["turns"] == 8 * 3
        goals = [g["name"] for g in results["goals"] if g["name"].startswith(f"scale, {label}:")]
        assert len(goals) == 5, goals
    assert run.stdout.count("## 8. Scale") == 2 and "## Goals" in run.stdout


def test_latency_summary_in_milliseconds():
    stats = Stats.of([0.010, 0.020, 0.030, 0.040, 0.100])

    assert (stats.n, stats.min, stats.max) == (5, 10.0, 100.0)
    assert stats.p50 == 30.0
    assert round(stats.p95, 1) == 88.0  # interpolated between 40 and 100
    assert round(stats.mean, 1) == 40.0
