"""Evals (`evals.py`): the dataset held as real conversations with worker processes, on
the scripted model and on an OpenAI-style server side by side, with and without faults;
and what a wrong expectation prints. Each test runs `evals.main` as `uv run evals.py`
would, against the session's dev server (`--address`)."""

from __future__ import annotations

import contextlib
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from openai_server import OpenAIServer
from temporalio.testing import WorkflowEnvironment

import evals

SIDE_BY_SIDE = "openai/eval-model"
SUMMARY_METRICS = {
    "cases",
    "passed",
    "pass_rate",
    "latency_mean_s",
    "latency_p50_s",
    "model_calls_mean",
    "tool_calls_mean",
    "retries_mean",
    "tokens_mean",
    "cost_mean_usd",
}
CASE_METRICS = {"latency_s", "model_calls", "tool_calls", "retries"}
# Quick ones that still take every path faults can hit: a model call, a tool, an approval
# and a note written once, a subagent, one model step after another.
FAULTED_CASES = ["multiply", "note_approved", "delegate_arithmetic", "several_steps"]


@dataclass
class EvalRun:
    code: int
    stdout: str
    stderr: str
    report: dict[str, Any]


async def run_evals(temporal: WorkflowEnvironment, folder: Path, *args: str) -> EvalRun:
    """`uv run evals.py --address ... ARGS --json ...`, in this process."""
    address = temporal.client.service_client.config.target_host
    report = folder / "report.json"
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        code = await evals.main(["--address", address, *args, "--json", str(report)])
    found = json.loads(report.read_text()) if report.exists() else {}
    return EvalRun(code, stdout.getvalue(), stderr.getvalue(), found)


@pytest.fixture(scope="module")
async def two_models(temporal: WorkflowEnvironment, tmp_path_factory) -> EvalRun:
    """The whole dataset on the scripted model and on a local OpenAI-style server, which
    answers as the scripted model would, over HTTP, through LiteLLM's OpenAI client."""
    server = await OpenAIServer().start()
    second = f"{SIDE_BY_SIDE} LLM_API_BASE={server.url} OPENAI_API_KEY=unused"
    try:
        return await run_evals(
            temporal, tmp_path_factory.mktemp("evals"), "--model", evals.SCRIPTED, "--model", second
        )
    finally:
        await server.stop()


def cases_in_the_dataset() -> int:
    return len(evals.load_cases(evals.CASES, [], None).cases)


async def test_the_dataset_passes_in_full_on_the_scripted_model(two_models: EvalRun):
    assert two_models.code == 0, two_models.stderr
    scripted, _ = two_models.report["runs"]
    assert scripted["summary"]["cases"] == cases_in_the_dataset() >= 20
    assert scripted["summary"]["pass_rate"] == 1.0
    assert "FAIL" not in two_models.stderr


async def test_two_models_print_one_table_side_by_side(two_models: EvalRun):
    header, passed, *rows = two_models.stdout.strip().splitlines()
    assert header.split() == [evals.SCRIPTED, SIDE_BY_SIDE]
    total = cases_in_the_dataset()
    assert passed.split() == ["cases", "passed", *[f"{total}/{total}", "(100%)"] * 2]
    assert [row.split(",")[0] for row in rows] == [
        "latency",
        "latency",
        "model calls",
        "tool calls",
        "retries",
        "tokens",
        "cost",
    ]
    # The same conversations, step for step: the second model answers as the first would.
    scripted, second = (run["summary"] for run in two_models.report["runs"])
    assert scripted["model_calls_mean"] == second["model_calls_mean"]


async def test_the_json_report_has_every_metric_of_every_run_and_case(two_models: EvalRun):
    for run in two_models.report["runs"]:
        assert set(run["summary"]) >= SUMMARY_METRICS, run["run"]
        for case in run["cases"]:
            assert set(case["metrics"]) >= CASE_METRICS, case["name"]
            assert case["record"]["turns"], case["name"]
    # What the history says the conversation did, for one case.
    [multiply] = [c for c in two_models.report["runs"][0]["cases"] if c["name"] == "multiply"]
    [call] = multiply["record"]["tools"]
    assert (call["name"], call["arguments"], call["outcome"]) == (
        "calculator",
        {"expression": "25 * 4"},
        "ok",
    )
    assert multiply["metrics"]["model_calls"] == 2
    # The tokens its plans recorded (the scripted model's, counted by LiteLLM), free.
    scripted = two_models.report["runs"][0]["summary"]
    assert scripted["tokens_mean"] > 0 and scripted["cost_mean_usd"] == 0


async def test_a_wrong_expectation_fails_saying_which_check_and_why(
    temporal: WorkflowEnvironment, tmp_path: Path
):
    cases = tmp_path / "wrong.yaml"
    cases.write_text(
        "name: wrong\n"
        "cases:\n"
        "  - name: multiply_expecting_101\n"
        '    inputs: {messages: ["What is 25 * 4?"]}\n'
        "    evaluators:\n"
        '      - ReplyContains: "101"\n'
        "      - ToolCalled: calculator\n"
        "      - ToolCalled: weather\n"
        '      - Judge: "The reply says that 25 * 4 is 101."\n'
    )
    # pydantic-ai's offline test model as the judge: it always says no, for reason "a".
    run = await run_evals(temporal, tmp_path, "--cases", str(cases), "--judge", "test")

    assert run.code == 1
    [line] = [line for line in run.stderr.splitlines() if line.startswith("FAIL")]
    assert line.startswith(f"FAIL {evals.SCRIPTED} · multiply_expecting_101 · ")
    assert "ReplyContains('101'): reply '25 * 4 = 100' does not contain '101'" in line
    assert "ToolCalled(weather): no call of weather; calls: calculator" in line
    assert "Judge('The reply says that 25 * 4 is 101.'): a" in line
    assert "ToolCalled(calculator)" not in line  # It passed.
    assert "0/1 (0%)" in run.stdout
    [case] = run.report["runs"][0]["cases"]
    assert case["checks"]["ToolCalled(calculator)"] is True


async def test_faults_cost_retries_and_time_but_change_no_outcome(
    temporal: WorkflowEnvironment, tmp_path: Path
):
    only = [arg for name in FAULTED_CASES for arg in ("--case", name)]
    run = await run_evals(temporal, tmp_path, "--faults", *only)

    assert run.code == 0, run.stderr
    assert "Faults changed no outcome" in run.stderr
    header = run.stdout.splitlines()[0]
    assert header.split("  ")[-1].strip() == f"{evals.SCRIPTED} + faults"
    without, with_faults = run.report["runs"]
    assert with_faults["faults"] == evals.FAULTS
    assert without["summary"]["pass_rate"] == with_faults["summary"]["pass_rate"] == 1.0
    # Every model call's first attempt failed (FAULT_LLM_FAILURES=1), and was retried.
    assert without["summary"]["retries_mean"] == 0
    assert with_faults["summary"]["retries_mean"] >= with_faults["summary"]["model_calls_mean"]
    # The same replies, and the approved note written once (NotesSaved passed), anyway.
    faulted = {case["name"]: case["record"] for case in with_faults["cases"]}
    for case in without["cases"]:
        replies = [
            [turn["reply"] for turn in r["turns"]] for r in (case["record"], faulted[case["name"]])
        ]
        assert replies[0] == replies[1], case["name"]
        assert faulted[case["name"]]["notes"] == case["record"]["notes"]
