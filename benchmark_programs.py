"""The benchmark's programs section (issue 22): one task, done the three ways a model can.

The task: the weather in N cities, and the warmest three. A model can call the tools one
reply at a time (a round trip per call, each re-sending the growing conversation), all in
one reply (parallel tool calls: every report comes back into the context), or write one
program (docs/programs.md) whose calls run in the workflow and whose answer alone comes
back. The scripted model does each on request ("the warmest three of A, B, ... one at a
time / at once / by program"), so the figures are this project's own code paths: model
calls and tokens from the `usage` query (docs/usage.md), latency at the client.
"""

from __future__ import annotations

import dataclasses
import json
import statistics
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from benchmark_harness import Conversation, Lab, Report, Stats, markdown_table, one_decimal
from contract import SessionInput, Usage
from function_tools import function_tool
from tools import demo_weather
from workflow import DurableAgentWorkflow

if TYPE_CHECKING:  # performance_benchmark imports this file: no arrow back up at run time.
    from performance_benchmark import Settings

# fmt: off
CITIES = [
    "Oslo", "Rome", "Paris", "Lima", "Cairo", "Tokyo", "Delhi", "Quito",
    "Dakar", "Hanoi", "Seoul", "Lagos", "Perth", "Riga", "Sofia", "Bern",
]
# fmt: on
ONE_PER_REPLY = "one call per reply"
ALL_IN_ONE_REPLY = "all calls in one reply"
PROGRAM = "a program"
# (way, the scripted model's phrase for it, run_program offered): the direct ways run as a
# conversation without programs does, so no row is sent a schema it does not use.
WAYS = (
    (ONE_PER_REPLY, "one at a time", False),
    (ALL_IN_ONE_REPLY, "at once", False),
    (PROGRAM, "by program", True),
)


@dataclass
class Row:
    """One way at one number of cities, and what its turns used and took."""

    way: str
    phrase: str
    programs: bool
    cities: list[str]
    expected: str
    """The reply every way must give."""
    schema_tokens: int
    """The tokens of the tool schemas each of its model calls is sent, as JSON text."""
    latencies: list[float] = field(default_factory=list)
    usages: list[Usage] = field(default_factory=list)

    @property
    def message(self) -> str:
        return f"The warmest three of {', '.join(self.cities)} {self.phrase}."

    async def measure(self, lab: Lab, report: Report) -> None:
        """One turn in a fresh conversation: the context is this task's alone, as in a
        conversation's first turn, and every round sends the same tokens."""
        session = SessionInput(
            tools=["weather"],
            max_delegation_depth=0,  # No delegate tool: weather, and run_program if offered.
            allow_programs=self.programs,
            max_model_steps_per_turn=len(self.cities) + 1,
        )
        label = f"programs-{len(self.cities)}-{self.phrase.replace(' ', '-')}"
        conversation = await Conversation.start(
            report, label, await lab.client(), await lab.worker(), session=session
        )
        if (latency := await conversation.turn(self.message, self.expected)) is None:
            return
        usage = await conversation.handle.query(DurableAgentWorkflow.usage)
        assert usage.last_turn is not None
        self.latencies.append(latency)
        self.usages.append(usage.last_turn.usage)

    def median(self, figure: str) -> float:
        return statistics.median(getattr(usage, figure) for usage in self.usages)


async def programs(lab: Lab, s: Settings, report: Report) -> dict[str, Any]:
    """Model calls, tokens sent and latency of the three ways, at each number of cities."""
    # LiteLLM takes seconds to import (and must not before the benchmark has set
    # LITELLM_LOCAL_MODEL_COST_MAP): only when the section runs.
    import litellm

    from llm_client import PROGRAM_SCHEMA
    from scripted_model import warmest_three

    weather = [function_tool(demo_weather).schema()]
    schema_tokens = {
        offered: litellm.token_counter(text=json.dumps(weather + [PROGRAM_SCHEMA] * offered))
        for offered in (False, True)
    }
    rows = []
    for count in s.program_cities:
        cities = CITIES[:count]
        # "[demo data] Oslo: 29°C, partly cloudy.": the answer, from the tool itself.
        celsius = [(int(demo_weather(c).split(": ")[1].split("°")[0]), c) for c in cities]
        expected = warmest_three(celsius)
        rows += [
            Row(way, phrase, offered, cities, expected, schema_tokens[offered])
            for way, phrase, offered in WAYS
        ]
    # An unmeasured turn of each way first (the worker's caches, the tokenizer), then
    # round by round, one turn of every row in each: the machine drifts over minutes, and
    # rows compared with each other then share the drift.
    for row in rows[: len(WAYS)]:
        await dataclasses.replace(row, latencies=[], usages=[]).measure(lab, report)
    for _ in range(s.program_rounds):
        for row in rows:
            await row.measure(lab, report)
    measured = [row for row in rows if row.usages]
    results = [
        {
            "way": row.way,
            "cities": len(row.cities),
            "turns": len(row.latencies),
            "model_calls": row.median("model_calls"),
            "tokens_sent": row.median("input_tokens"),
            "tokens_received": row.median("output_tokens"),
            "tokens_sent_with_schemas": row.median("input_tokens")
            + row.median("model_calls") * row.schema_tokens,
            "latency_ms": dataclasses.asdict(Stats.of(row.latencies)),
        }
        for row in measured
    ]
    report.print(
        f"## 7. Programs: the weather in {', '.join(map(str, s.program_cities))} cities and "
        "the warmest three",
        f"Each way in a fresh conversation, after a warm-up turn of each way, "
        f"{s.program_rounds} rounds of one turn of every row. The tool offered: weather, "
        "and run_program for the program (docs/programs.md). Tokens: the turn's usage "
        "(`usage` query), which counts the messages sent, not the tool schemas. A real "
        "provider is also sent the schemas, on every call: weather's is "
        f"{schema_tokens[False]} tokens, weather's and run_program's together "
        f"{schema_tokens[True]} (as JSON text); the last column adds them, once per model "
        "call. Every reply is checked: the same three cities, whichever way.",
        markdown_table(
            [
                "way",
                "cities",
                "model calls",
                "tokens sent",
                "tokens received",
                "p50 ms",
                "p95 ms",
                "tokens sent, schemas counted",
            ],
            [
                [
                    r["way"],
                    r["cities"],
                    f"{r['model_calls']:.0f}",
                    f"{r['tokens_sent']:.0f}",
                    f"{r['tokens_received']:.0f}",
                    *one_decimal(r["latency_ms"]["p50"], r["latency_ms"]["p95"]),
                    f"{r['tokens_sent_with_schemas']:.0f}",
                ]
                for r in results
            ],
        ),
    )
    goals(report, results, s.program_cities)
    return {
        "rounds": s.program_rounds,
        "schema_tokens_per_call": {"direct": schema_tokens[False], "program": schema_tokens[True]},
        "rows": results,
    }


def goals(report: Report, results: list[dict[str, Any]], counts: tuple[int, ...]) -> None:
    """Issue 22's targets: at most 2 model calls for a program, whatever the number of
    cities, and fewer tokens sent than the direct way, each direct way, from 4 cities up."""
    found = {(r["way"], r["cities"]): r for r in results}
    program = [found[PROGRAM, n] for n in counts if (PROGRAM, n) in found]
    if program:
        calls = [r["model_calls"] for r in program]
        report.goal(
            f"programs: model calls of a program, {counts[0]} to {counts[-1]} cities",
            "<= 2",
            ", ".join(f"{c:.0f}" for c in calls),
            max(calls) <= 2,
        )
    for direct in (ONE_PER_REPLY, ALL_IN_ONE_REPLY):
        pairs = [
            (n, found[PROGRAM, n]["tokens_sent"] / found[direct, n]["tokens_sent"])
            for n in counts
            if (PROGRAM, n) in found and (direct, n) in found and n >= 4
        ]
        if pairs:
            report.goal(
                f"programs: tokens sent by a program against {direct}, from 4 cities up",
                "< 1x",
                ", ".join(f"{ratio:.2f}x at {n}" for n, ratio in pairs),
                all(ratio < 1 for _, ratio in pairs),
            )
