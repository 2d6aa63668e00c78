"""What a run of the dataset amounts to: a column of the side-by-side table, a line per
failed case, the outcomes that faults must not change, and the JSON report.

A run is pydantic-evals' `EvaluationReport` of the dataset on one worker setup (a model,
faults on or off); its cases' outputs are the `ConversationRecord`s the evaluators read.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from pydantic_evals.reporting import EvaluationReport, ReportCase, ReportCaseFailure

from eval_record import ConversationRecord

Report = EvaluationReport[Any, ConversationRecord, Any]


@dataclass(frozen=True)
class Summary:
    """One run's column: means are per case, over the cases that ran to the end; None
    where unknown (no usage recorded, a price LiteLLM does not know)."""

    run: str
    cases: int
    passed: int
    latency_mean_s: float | None
    latency_p50_s: float | None
    model_calls_mean: float | None
    tool_calls_mean: float | None
    retries_mean: float | None
    tokens_mean: float | None
    cost_mean_usd: float | None

    @property
    def pass_rate(self) -> float:
        return self.passed / self.cases if self.cases else 0.0

    @classmethod
    def of(cls, report: Report) -> Summary:
        records = [case.output for case in report.cases]
        latencies = [record.latency_s for record in records]
        return cls(
            run=report.name,
            cases=len(report.cases) + len(report.failures),
            passed=sum(1 for case in report.cases if passed(case)),
            latency_mean_s=statistics.fmean(latencies) if latencies else None,
            latency_p50_s=statistics.median(latencies) if latencies else None,
            model_calls_mean=_mean(records, lambda r: r.model_calls),
            tool_calls_mean=_mean(records, lambda r: len(r.tools)),
            retries_mean=_mean(records, lambda r: r.retries),
            tokens_mean=_mean(records, lambda r: r.tokens),
            cost_mean_usd=_mean(records, lambda r: r.cost_usd),
        )

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "pass_rate": self.pass_rate}


def _mean(
    records: list[ConversationRecord], value: Callable[[ConversationRecord], float | None]
) -> float | None:
    values = [value(record) for record in records]
    if not values or any(v is None for v in values):
        return None
    return statistics.fmean(v for v in values if v is not None)


def passed(case: ReportCase) -> bool:
    return all(result.value for result in case.assertions.values()) and not (
        case.evaluator_failures
    )


def table(summaries: list[Summary]) -> str:
    """The runs side by side, one column each, one row per measure."""
    rows: list[tuple[str, Callable[[Summary], str]]] = [
        ("cases passed", lambda s: f"{s.passed}/{s.cases} ({s.pass_rate:.0%})"),
        ("latency, mean", lambda s: _number(s.latency_mean_s, "{:.2f} s")),
        ("latency, p50", lambda s: _number(s.latency_p50_s, "{:.2f} s")),
        ("model calls, mean", lambda s: _number(s.model_calls_mean, "{:.1f}")),
        ("tool calls, mean", lambda s: _number(s.tool_calls_mean, "{:.1f}")),
        ("retries, mean", lambda s: _number(s.retries_mean, "{:.1f}")),
        ("tokens, mean", lambda s: _number(s.tokens_mean, "{:,.0f}")),
        ("cost, mean", lambda s: _number(s.cost_mean_usd, "${:.4f}")),
    ]
    grid = [["", *(s.run for s in summaries)]]
    grid += [[label, *(cell(s) for s in summaries)] for label, cell in rows]
    widths = [max(len(row[i]) for row in grid) for i in range(len(grid[0]))]
    lines = [
        "  ".join(text.ljust(width) for text, width in zip(row, widths, strict=True))
        for row in grid
    ]
    return "\n".join(line.rstrip() for line in lines)


def _number(value: float | None, form: str) -> str:
    return "-" if value is None else form.format(value)


def failure_lines(report: Report) -> list[str]:
    """One line per failed case: which checks failed and why, or the error that stopped it."""
    lines = []
    for case in report.cases:
        if passed(case):
            continue
        why = [f"{name}: {r.reason}" for name, r in case.assertions.items() if not r.value]
        why += [f"{f.name} raised {f.error_message}" for f in case.evaluator_failures]
        lines.append(f"FAIL {report.name} · {case.name} · {'; '.join(why)}")
    lines += [f"FAIL {report.name} · {f.name} · {f.error_message}" for f in report.failures]
    return lines


def outcomes(report: Report) -> dict[str, dict[str, bool] | str]:
    """Per case, each check's verdict; or the error, for a case that did not run to the end."""
    found: dict[str, dict[str, bool] | str] = {
        case.name: {name: result.value for name, result in case.assertions.items()}
        for case in report.cases
    }
    found.update({failure.name: f"error: {failure.error_message}" for failure in report.failures})
    return found


def differences(without: Report, with_faults: Report) -> list[str]:
    """Where the faults changed an outcome: a line per case."""
    before, after = outcomes(without), outcomes(with_faults)
    return [
        f"{with_faults.name} · {name}: {after.get(name)} (without faults: {before[name]})"
        for name in before
        if after.get(name) != before[name]
    ]


def case_json(case: ReportCase | ReportCaseFailure) -> dict[str, Any]:
    if isinstance(case, ReportCaseFailure):
        return {"name": case.name, "passed": False, "error": case.error_message}
    failed = {name: r.reason for name, r in case.assertions.items() if not r.value}
    return {
        "name": case.name,
        "passed": passed(case),
        "checks": {name: result.value for name, result in case.assertions.items()},
        "failed": failed,
        "metrics": case.output.metrics(),
        "record": case.output.to_json(),
    }
