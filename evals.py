"""Evals: the same cases on each model, as real conversations with the durable agent.

    uv run evals.py                                   # the dataset on the scripted model
    uv run evals.py --model openai/gpt-4o-mini --model anthropic/claude-3-5-haiku-latest
    uv run evals.py --model "ollama_chat/llama3.2 LLM_API_BASE=http://localhost:11434"
    uv run evals.py --faults                          # the same, with and without faults
    uv run evals.py --case multiply --json evals.json --judge openai:gpt-4o-mini

Each case of `evals/cases.yaml` (a pydantic-evals Dataset) is a conversation held with
the project's own worker on a Temporal server: embedded (a dev server started here) or
the one at `--address`. A model is a worker setting, so each `--model` gets a worker
process of its own (`worker.WorkerProcess`), on a task queue of its own, configured by
the environment it is started with: LLM_MODEL, and any KEY=VALUE after the model name
(keys are best kept in .env, which the worker reads). `--faults` starts a second worker
per model with fault switches on (activities.Faults) and runs the dataset there too: the
outcomes must be the same, and the table shows what the faults cost.

The runs go one after the other, so they do not slow each other down; the cases of a
run go `--concurrency` at a time. It prints one table, the runs side by side, and a line
per failed case on stderr; it exits 0 if every case passed (and the faults changed no
outcome), 1 if not, 2 if it could not run (docs/evals.md).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shlex
import sys
import tempfile
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dotenv import load_dotenv
from pydantic_evals import Dataset
from pydantic_evals.dataset import increment_eval_metric
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from temporalio.client import Client

import eval_report
import worker
from dev_server import NoTemporalBinary, start_dev_server
from eval_checks import CHECKS, Judge
from eval_conversation import Conversation, converse
from eval_record import ConversationRecord
from start_workflow import quiet_sdk_core

CASES = Path(__file__).with_name("evals") / "cases.yaml"
SCRIPTED = "scripted/agent"
FAULTS = {"FAULT_FAILURE_RATE": "0.2", "FAULT_LLM_FAILURES": "1"}
"""`--faults` without a value: a fifth of all activity attempts fail at random, and every
model call's first attempt fails, as in a provider outage; Temporal retries them all."""
CASE_TIMEOUT_S = 300.0
# Every worker an eval starts runs the agent as the cases expect it, whatever .env says:
# save_note waits for approval (which the harness gives or refuses), no call expires, and
# no fault switch is on unless this is the faults run. load_dotenv fills only what is unset.
PINNED_SETTINGS = {
    "APPROVAL_REQUIRED_TOOLS": "save_note",
    "APPROVAL_TIMEOUT_S": "",
    "LLM_API_BASE": "",
    **dict.fromkeys(
        ["FAULT_LLM_FAILURES", "FAULT_TOOL_BUG", "FAULT_TOOL_DELAY_S", "FAULT_FAILURE_RATE"], "0"
    ),
}

Cases = Dataset[Conversation, ConversationRecord, Any]


class EvalsError(Exception):
    """A reason the evals cannot run: exit 2 with this message."""


@dataclass
class Setup:
    """One run: a model and its worker settings, faults on or off, and its worker."""

    label: str
    model: str
    settings: dict[str, str]
    faults: dict[str, str] = field(default_factory=dict)
    task_queue: str = field(default_factory=lambda: f"evals-{uuid.uuid4().hex[:8]}")
    notes_file: Path = Path()
    """Where its worker writes notes: set by `workers`, in a folder of this run's own."""

    def worker_env(self) -> dict[str, str]:
        return {
            **PINNED_SETTINGS,
            "LLM_MODEL": self.model,
            **self.settings,
            **self.faults,
            "NOTES_FILE": str(self.notes_file),
        }


def setups(models: Sequence[str], faults: dict[str, str] | None) -> list[Setup]:
    """A setup per `--model` ("MODEL KEY=VALUE ..."), and with faults a second one each."""
    found: list[Setup] = []
    for spec in models:
        model, *pairs = shlex.split(spec) or [""]
        if not model or "=" in model:
            raise EvalsError(f"--model {spec!r}: give a model first, then KEY=VALUE settings")
        settings = dict(_setting(pair, f"--model {spec!r}") for pair in pairs)
        label = model if all(s.model != model for s in found) else f"{model} #{len(found) + 1}"
        found.append(Setup(label, model, settings))
    if faults:
        found = [
            run
            for setup in found
            for run in (
                setup,
                Setup(f"{setup.label} + faults", setup.model, setup.settings, faults),
            )
        ]
    return found


def fault_switches(spec: str) -> dict[str, str]:
    switches = dict(_setting(pair, "--faults") for pair in shlex.split(spec))
    if not switches or any(not name.startswith("FAULT_") for name in switches):
        raise EvalsError(f"--faults {spec!r}: give FAULT_*=VALUE switches (activities.Faults)")
    return switches


def _setting(pair: str, where: str) -> tuple[str, str]:
    name, equals, value = pair.partition("=")
    if not equals or not name:
        raise EvalsError(f"{where}: {pair!r} is not KEY=VALUE")
    return name, value


def load_cases(path: Path, names: Sequence[str], judge: str | None) -> Cases:
    """The dataset, only the cases named (all if none), its judges given `judge`'s model."""
    try:
        dataset = Cases.from_file(path, custom_evaluator_types=CHECKS)
    except Exception as err:  # Unreadable, not YAML, not a dataset, an unknown check: why.
        problems = "; ".join(str(problem) for problem in getattr(err, "exceptions", [err]))
        raise EvalsError(f"cannot read the cases in {path}: {problems}") from None
    if unknown := sorted(set(names) - {case.name for case in dataset.cases}):
        raise EvalsError(f"no case named {', '.join(unknown)} in {path}")
    if names:
        dataset.cases = [case for case in dataset.cases if case.name in names]
    for check in [e for case in dataset.cases for e in case.evaluators] + dataset.evaluators:
        if isinstance(check, Judge) and check.model is None:
            check.model = judge
    return dataset


@asynccontextmanager
async def temporal(address: str | None) -> AsyncIterator[tuple[Client, str]]:
    """The server at `address`, or a dev server started for this run."""
    if address:
        yield await worker.connect(address), address
        return
    async with await start_dev_server() as server:
        target = server.client.service_client.config.target_host
        yield await worker.connect(target), target


@asynccontextmanager
async def workers(address: str, runs: list[Setup]) -> AsyncIterator[None]:
    """A worker process per setup, all started at once; killed when the evals are done."""
    with tempfile.TemporaryDirectory(prefix="evals-") as folder:
        started: list[worker.WorkerProcess] = []
        try:
            for number, setup in enumerate(runs):
                setup.notes_file = Path(folder) / f"notes-{number}.jsonl"
                log = Path(folder) / f"worker-{number}.log"
                env = setup.worker_env()
                started.append(worker.WorkerProcess(address, setup.task_queue, log, env))
            try:
                await asyncio.gather(*(process.ready() for process in started))
            except RuntimeError as err:
                raise EvalsError(str(err)) from None
            yield
        finally:
            for process in started:
                process.kill()


async def run_all(
    dataset: Cases, client: Client, runs: list[Setup], concurrency: int, timeout_s: float
) -> list[eval_report.Report]:
    """The dataset on each setup in turn, under one progress bar (cases x runs)."""
    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn()]
    progress = Progress(*columns, TimeElapsedColumn(), console=Console(stderr=True))
    reports = []
    with progress:
        bar = progress.add_task("evals", total=len(dataset.cases) * len(runs))
        for setup in runs:
            progress.update(bar, description=setup.label)

            async def hold(conversation: Conversation, setup: Setup = setup) -> ConversationRecord:
                try:
                    record = await converse(
                        client, setup.task_queue, conversation, setup.notes_file, timeout_s
                    )
                finally:
                    progress.advance(bar)
                for name, value in record.metrics().items():
                    increment_eval_metric(name, value)
                return record

            report = await dataset.evaluate(
                hold, name=setup.label, max_concurrency=concurrency, progress=False
            )
            reports.append(report)
    return reports


def report_json(dataset: Cases, runs: list[Setup], reports: list[eval_report.Report]) -> dict:
    return {
        "dataset": dataset.name,
        "runs": [
            {
                "run": setup.label,
                "model": setup.model,
                "settings": sorted(setup.settings),  # names only: values may be keys
                "faults": setup.faults,
                "summary": eval_report.Summary.of(report).to_json(),
                "cases": [eval_report.case_json(c) for c in [*report.cases, *report.failures]],
            }
            for setup, report in zip(runs, reports, strict=True)
        ],
    }


async def evaluate(args: argparse.Namespace) -> int:
    dataset = load_cases(args.cases, args.case or [], args.judge)
    faults = fault_switches(args.faults) if args.faults is not None else None
    runs = setups(args.model or [SCRIPTED], faults)
    async with temporal(args.address) as (client, address), workers(address, runs):
        reports = await run_all(dataset, client, runs, args.concurrency, args.timeout)
    if args.verbose:
        for report in reports:
            report.print(include_reasons=True)
    print(eval_report.table([eval_report.Summary.of(report) for report in reports]))
    failures = [line for report in reports for line in eval_report.failure_lines(report)]
    changed = []
    if faults:
        for without, with_faults in zip(reports[::2], reports[1::2], strict=True):
            changed += eval_report.differences(without, with_faults)
        print(_fault_verdict(changed, len(dataset.cases)), file=sys.stderr)
    for line in failures + [f"CHANGED BY FAULTS {line}" for line in changed]:
        print(line, file=sys.stderr)
    judges = [e for c in dataset.cases for e in c.evaluators if isinstance(e, Judge)]
    if judges and not args.judge:
        print(f"Judge checks skipped: {len(judges)} (no --judge model).", file=sys.stderr)
    if args.json:
        args.json.write_text(json.dumps(report_json(dataset, runs, reports), indent=2) + "\n")
    return 1 if failures or changed else 0


def _fault_verdict(changed: list[str], cases: int) -> str:
    if not changed:
        return f"Faults changed no outcome: every check of the {cases} cases judged the same."
    return f"Faults changed {len(changed)} outcomes (below)."


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model",
        action="append",
        metavar='"MODEL [KEY=VALUE ...]"',
        help=f"a LiteLLM model and worker settings; repeatable (default {SCRIPTED})",
    )
    parser.add_argument(
        "--faults",
        nargs="?",
        const=" ".join(f"{k}={v}" for k, v in FAULTS.items()),
        metavar='"FAULT_X=V ..."',
        help="also run with fault switches on (default: %(const)s)",
    )
    parser.add_argument("--cases", type=Path, default=CASES, help="the dataset (%(default)s)")
    parser.add_argument("--case", action="append", metavar="NAME", help="only this case")
    parser.add_argument("--json", type=Path, metavar="PATH", help="write the report here")
    parser.add_argument("--judge", metavar="MODEL", help="pydantic-ai model for Judge checks")
    parser.add_argument("--address", help="a running Temporal server (default: start one)")
    parser.add_argument("--concurrency", type=int, default=4, help="cases at once (%(default)s)")
    parser.add_argument(
        "--timeout", type=float, default=CASE_TIMEOUT_S, help="seconds a case may take"
    )
    parser.add_argument("--verbose", action="store_true", help="also pydantic-evals' reports")
    return parser.parse_args(argv)


async def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    load_dotenv()
    try:
        return await evaluate(args)
    except (EvalsError, worker.TemporalUnreachable, NoTemporalBinary, ValueError) as err:
        print(f"evals: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    quiet_sdk_core()
    worker.exit_process(asyncio.run(main()))
