"""Performance benchmark: reproduce the paper's Table 2, and measure what it leaves out.

    uv run performance_benchmark.py                        # every section, full size
    uv run performance_benchmark.py --quick                # every section, small: < 1 min
    uv run performance_benchmark.py --sections table2,pacing --iterations 100
    uv run performance_benchmark.py --json results.json    # also machine and versions
    uv run performance_benchmark.py --sections scale       # on request: 20 min here
    uv run performance_benchmark.py --address HOST:7233 --external-worker

It starts its own Temporal dev servers and worker processes (`worker.py`, as a user runs
it), drives conversations with the update the chat client sends, and times every turn at
the client: what a user waits for. Markdown tables go to stdout, progress to stderr.
Goals are reported as met or missed. The exit status is non-zero when a turn fails or a
check does not hold (a wrong reply, an activity that ran twice): a goal missed on a slow
machine is a finding, not a failure.

Sections:
  table2      the paper's Table 2: a loop with no durability against the durable loop,
              and the durable loop with traces on, with encryption on, and a tool
              called through an MCP server against a built-in one
  pacing      back-to-back turns against turns with think time, on two server settings
  growth      latency and history size at turns 1, 100 and 1 000 of one conversation
  recovery    the worker SIGKILLed after 10, 100, 1 000 turns: time to the next reply
  throughput  turns per second with 1, 10 and 50 conversations on one worker
  long        5 000 turns of 1 KB messages, the worker killed at turn 4 000
  programs    the weather in 4, 8, 16 cities and the warmest three: one tool call per
              model reply, all calls in one reply, one program (benchmark_programs.py)

On request only (`--sections scale`, about 20 minutes here):
  scale       10 000 idle conversations, cold turns, 1 000 waiting approvals, 500 busy
              conversations, on a server in memory and on disk (benchmark_scale.py)
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import functools
import json
import math
import os
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dotenv import load_dotenv

import tracing
import worker
from benchmark_harness import (
    ON_DISK,
    PLAIN,
    SHORT_CONVERSATION_TURNS,
    Conversation,
    Lab,
    Report,
    Stats,
    check_model_calls,
    cpu_seconds,
    crash,
    in_memory_turns,
    machine,
    markdown_table,
    one_decimal,
    package_versions,
    same,
    short_conversations,
)
from benchmark_programs import programs
from benchmark_scale import scale
from codec import new_key
from dev_server import DEV_SERVER_ARGS

TOOL = "What is 25 * 4?"  # model -> calculator -> model
SECTIONS = ("table2", "pacing", "growth", "recovery", "throughput", "long", "programs")
"""What a run runs unless --sections says otherwise."""
ON_REQUEST = ("scale",)
"""Sections that run only when named: scale takes about 20 minutes here."""
HISTORY_WARNING_BYTES = 10 * 1024 * 1024
HISTORY_WARNING_EVENTS = 10_240
# Growth: the p50 of this many turns up to each sampled turn. Ten swung the turn-1000
# figure by ±5 ms between runs of the same code on this machine.
GROWTH_WINDOW = 50
FILLER = "The quick brown fox jumps over the lazy dog while the agent keeps its state. "
DURABLE = "durable, scripted model"
TRACES_ON = f"{DURABLE}, traces on"
ENCRYPTION_ON = f"{DURABLE}, encryption on"
MCP_ON = f"{DURABLE}, MCP stdio server"
# The same tool turn, the calculator built in and served by demo_mcp_server.py over stdio,
# both through one worker: the difference is the MCP hop.
MCP_TURNS = {
    "built-in tool": 'use calculator {"expression": "25 * 4"}',
    "MCP tool": 'use demo__calculate {"expression": "25 * 4"}',
}
BENCHMARK_KEY = new_key("benchmark")  # a fresh one each run


@dataclass(frozen=True)
class Settings:
    """The sizes of a run. `--quick` shrinks them all; `--iterations` sets Table 2's n."""

    iterations: int = 50
    simulated_iterations: int = 10
    simulated_latency_ms: int = 800
    think_ms: int = 250
    pacing_turns: int = 100
    growth_turns: int = 1_000
    recovery_kills: tuple[int, ...] = (10, 100, 1_000)
    throughput_conversations: tuple[int, ...] = (1, 10, 50)
    throughput_turns: int = 20
    long_turns: int = 5_000
    long_kill_at: int = 4_000
    long_message_chars: int = 1_000
    program_cities: tuple[int, ...] = (4, 8, 16)
    program_rounds: int = 10
    scale_conversations: int = 10_000


QUICK = Settings(
    iterations=6,
    simulated_iterations=1,
    think_ms=100,
    pacing_turns=30,
    growth_turns=100,
    recovery_kills=(10,),
    throughput_turns=3,
    long_turns=120,
    long_kill_at=100,
    program_rounds=1,
)


@dataclass
class Row:
    """One row of Table 2 (a mode and a kind of turn) and the turns measured for it."""

    mode: str
    kind: str
    turns: int
    conversation: Callable[[int], Awaitable[tuple[list[float], list[float], int]]]
    """Runs a fresh conversation of that many measured turns: latencies, first deltas,
    tokens used."""
    streamed: bool = False
    latencies: list[float] = dataclasses.field(default_factory=list)
    first_deltas: list[float] = dataclasses.field(default_factory=list)
    tokens: int = 0

    async def run_conversation(self, turns: int) -> None:
        latencies, first_deltas, tokens = await self.conversation(turns)
        self.latencies += latencies
        self.first_deltas += first_deltas
        self.tokens += tokens


# --- Sections -----------------------------------------------------------------------------


async def table2(lab: Lab, s: Settings, report: Report) -> dict[str, Any]:
    """Per-turn latency of the loop with no durability and of the durable loop."""
    think_s = s.think_ms / 1000
    kinds = [("plain", PLAIN, "scripted"), ("tool", TOOL, "100")]
    in_memory = "in-memory, scripted model"
    stats: dict[str, dict[str, Stats]] = {in_memory: {}}
    in_memory_cpu_ms: dict[str, float] = {}
    for kind, text, _ in kinds:
        await in_memory_turns(2, text)  # warm-up: imports, caches
        cpu = time.process_time()
        stats[in_memory][kind] = Stats.of(await in_memory_turns(s.iterations, text))
        in_memory_cpu_ms[kind] = 1000 * (time.process_time() - cpu) / s.iterations

    floor = "bare Temporal: update + 1 / 3 no-op activities (the floor)"
    simulated = f"{DURABLE} + {s.simulated_latency_ms} ms simulated latency"
    slow = {"SCRIPTED_LATENCY_MS": str(s.simulated_latency_ms)}
    # (mode, worker settings, turns, streamed): a streamed turn has a subscriber watching.
    # The client of each mode connects with its worker's settings (encryption keys).
    switches = switched_on()
    modes = [
        (DURABLE, {}, s.iterations, False),
        *((mode, env, s.iterations, False) for mode, env in switches.items()),
        (f"{DURABLE}, streamed", {}, s.iterations, True),
        (simulated, slow, s.simulated_iterations, False),
        (f"{simulated}, streamed", slow, s.simulated_iterations, True),
    ]
    notes = []
    if ENCRYPTION_ON not in switches:
        notes.append(f"{ENCRYPTION_ON}: skipped, every row encrypts (ENCRYPTION_KEYS is set).")
    if real_model := os.environ.get("LLM_MODEL"):
        modes.append((f"durable, {real_model}", {"REAL_MODEL": "1"}, s.simulated_iterations, False))
    else:
        notes.append("Durable + real model: skipped, LLM_MODEL is not set (docs/real-models.md).")

    rows: list[Row] = []
    if floor_queue := await lab.floor_worker():
        floor_client = await lab.client()
        for kind, activities in (("plain", 1), ("tool", 3)):
            run = functools.partial(
                short_conversations,
                report,
                "floor",
                floor_client,
                floor_queue,
                text="",
                expect=None,
                think_s=think_s,
                bare_activities=activities,
            )
            rows.append(Row(floor, kind, s.iterations, run))
    for mode, env, n, stream in modes:
        client, task_queue = await lab.client(**env), await lab.worker(**env)
        if task_queue is None:
            notes.append(f"{mode}: skipped, an external worker runs only its own settings.")
            continue
        for kind, text, expect in kinds:
            run = functools.partial(
                short_conversations,
                report,
                "table2",
                client,
                task_queue,
                text=text,
                expect=None if env.get("REAL_MODEL") else expect,
                think_s=think_s,
                stream=stream,
            )
            rows.append(Row(mode, kind, n, run, stream))
    mcp_env = mcp_worker_env(lab.workdir)
    if mcp_queue := await lab.worker(**mcp_env):
        mcp_client = await lab.client(**mcp_env)
        for kind, text in MCP_TURNS.items():
            run = functools.partial(
                short_conversations,
                report,
                "table2",
                mcp_client,
                mcp_queue,
                text=text,
                expect="100",
                think_s=think_s,
            )
            rows.append(Row(MCP_ON, kind, s.iterations, run))
    else:
        notes.append(f"{MCP_ON}: skipped, an external worker runs only its own settings.")
    # Round by round, one short conversation of every row in each: this machine drifts by
    # several ms over minutes, and rows that are compared (the excess, the switches, the
    # stream's cost) then share the drift instead of each meeting its own.
    for first in range(0, max(row.turns for row in rows), SHORT_CONVERSATION_TURNS):
        for row in rows:
            if first < row.turns:
                await row.run_conversation(min(SHORT_CONVERSATION_TURNS, row.turns - first))
    first_text: dict[str, dict[str, Stats]] = {}
    tokens_per_turn: dict[str, dict[str, float]] = {}
    for row in rows:
        stats.setdefault(row.mode, {})[row.kind] = Stats.of(row.latencies)
        if row.tokens:
            tokens_per_turn.setdefault(row.mode, {})[row.kind] = row.tokens / len(row.latencies)
        if row.streamed:
            first_text.setdefault(row.mode, {})[row.kind] = Stats.of(row.first_deltas)
    if DURABLE in stats:
        client, task_queue = await lab.client(), await lab.worker()
        conversation = await Conversation.start(report, "table2", client, task_queue)
        rejections = []
        for _ in range(s.iterations):
            rejections.append(await conversation.rejection())
            await asyncio.sleep(think_s)
        stats[DURABLE]["rejected"] = Stats.of([x for x in rejections if x is not None])

    durable = stats.get(DURABLE, {})
    excess = {
        kind: {
            "durable_p50_ms": durable[kind].p50,
            "floor_p50_ms": stats[floor][kind].p50,
            "in_memory_p50_ms": stats[in_memory][kind].p50,
            "excess_ms": (
                e := durable[kind].p50 - stats[floor][kind].p50 - stats[in_memory][kind].p50
            ),
            "excess_share_of_floor": e / stats[floor][kind].p50,
        }
        for kind in ("plain", "tool")
        if kind in durable and kind in stats.get(floor, {})
    }
    overhead = {}
    for kind, calls in (("plain", 1), ("tool", 2)):
        if kind in durable:
            base, total = stats[in_memory][kind].p50, durable[kind].p50
            model_ms = calls * s.simulated_latency_ms
            overhead[kind] = {
                "in_memory_p50_ms": base,
                "durable_p50_ms": total,
                "overhead_ms": total - base,
                "model_calls": calls,
                "percent_of_simulated_model_time": 100 * (total - base) / model_ms,
            }
    switch_costs = costs_against_durable(stats)
    mcp_hop = {}
    if MCP_ON in stats:
        builtin, served = (stats[MCP_ON][kind].p50 for kind in MCP_TURNS)
        mcp_hop = {"built_in_p50_ms": builtin, "mcp_p50_ms": served, "hop_ms": served - builtin}
    report.print(
        "## 1. Table 2: per-turn latency (ms)",
        f"Turns paced {s.think_ms} ms apart, in fresh conversations of "
        f"{SHORT_CONVERSATION_TURNS} turns after a warm-up turn, one conversation of each row "
        "in turn, round by round. plain: one model call; "
        "tool: model -> calculator -> model; rejected: an empty message, refused by the update "
        "validator (one workflow task, no activity: the floor of any durable turn). In-memory: "
        "the same activities and model in a plain asyncio loop, no Temporal. Tokens/turn: "
        "input + output tokens of the turn's model calls, from the conversation's `usage` "
        "query (the scripted model's as LiteLLM counts them).",
        markdown_table(
            ["mode", "turn", *Stats.HEADERS, "tokens/turn"],
            [
                [mode, kind, *st.cells(), _tokens_cell(tokens_per_turn, mode, kind)]
                for mode, row in stats.items()
                for kind, st in row.items()
            ],
        ),
        "Durability overhead = durable p50 - in-memory p50:",
        markdown_table(
            ["turn", "in-memory", "durable", "overhead ms", "share of simulated model time"],
            [
                [
                    kind,
                    *one_decimal(o["in_memory_p50_ms"], o["durable_p50_ms"], o["overhead_ms"]),
                    f"{o['percent_of_simulated_model_time']:.1f}% of "
                    f"{o['model_calls']} x {s.simulated_latency_ms} ms",
                ]
                for kind, o in overhead.items()
            ],
        ),
        "Excess = durable - floor - in-memory: what this project's durable layer adds beyond "
        "Temporal itself and beyond the agent's own work (p50, ms):",
        markdown_table(
            ["turn", "durable", "floor", "in-memory", "excess ms", "excess / floor"],
            [
                [
                    kind,
                    *one_decimal(
                        e["durable_p50_ms"],
                        e["floor_p50_ms"],
                        e["in_memory_p50_ms"],
                        e["excess_ms"],
                    ),
                    f"{100 * e['excess_share_of_floor']:.0f}%",
                ]
                for kind, e in excess.items()
            ],
        ),
        "Streaming: the same turns with a subscriber watching each on the event stream "
        "(docs/streaming.md), against the same mode without; first text: from sending to "
        "the first piece of the reply at the subscriber (of a tool turn: after the tool).",
        markdown_table(
            [
                "mode",
                "turn",
                "reply p50, not streamed",
                "reply p50, streamed",
                "cost ms",
                "first text p50",
                "first text p95",
            ],
            [
                [
                    mode,
                    kind,
                    *one_decimal(
                        stats[mode.removesuffix(", streamed")][kind].p50,
                        stats[mode][kind].p50,
                        stats[mode][kind].p50 - stats[mode.removesuffix(", streamed")][kind].p50,
                        first.p50,
                        first.p95,
                    ),
                ]
                for mode, row in first_text.items()
                if mode.removesuffix(", streamed") in stats
                for kind, first in row.items()
            ],
        ),
        "Traces and encryption: the durable row with each turned on, against it. Traces on: "
        "the worker traces every turn and exports each span with the console exporter into "
        "/dev/null (TRACES_FILE): span creation, context propagation and JSON serialisation "
        "are paid, a terminal's speed is not; the benchmark's client does not trace (its one "
        "span per turn is left out). Encryption on: worker and client encrypt every payload "
        "(AES-256-GCM, a fresh key).",
        markdown_table(
            ["mode", "turn", "durable p50", "p50", "cost ms", "cost %"],
            [
                [
                    mode,
                    kind,
                    *one_decimal(c["durable_p50_ms"], c["p50_ms"], c["cost_ms"]),
                    f"{c['cost_percent']:+.1f}%",
                ]
                for mode, row in switch_costs.items()
                for kind, c in row.items()
            ],
        ),
        "MCP: one tool turn (model -> tool -> model), the tool the calculator, built in or "
        "served by demo_mcp_server.py over stdio, both through one worker with MCP_CONFIG set "
        "(docs/tools.md); the MCP hop is the difference (p50, ms):",
        markdown_table(
            ["built-in tool", "MCP tool", "MCP hop ms"],
            [one_decimal(*mcp_hop.values())] if mcp_hop else [],
        ),
        *notes,
    )
    if mcp_hop:
        report.goal(
            "MCP hop: an MCP stdio tool call against a built-in one, p50",
            "<= 5 ms per call",
            f"{mcp_hop['hop_ms']:+.1f} ms",
            mcp_hop["hop_ms"] <= 5,
        )
    for kind, e in excess.items():
        share = e["excess_share_of_floor"]
        report.goal(
            f"excess over the floor, {kind} turn, p50, paced",
            "<= 10% of the floor",
            f"{100 * share:.0f}% ({e['excess_ms']:.1f} ms)",
            share <= 0.10,
        )
    for mode, row in switch_costs.items():
        report.goal(
            f"{mode.removeprefix(DURABLE + ', ')}: added to the durable p50 ({', '.join(row)})",
            "<= 10 %",
            ", ".join(f"{c['cost_percent']:+.1f}%" for c in row.values()),
            all(c["cost_percent"] <= 10 for c in row.values()),
        )
    return {
        "think_ms": s.think_ms,
        "modes": {
            m: {k: dataclasses.asdict(v) for k, v in row.items()} for m, row in stats.items()
        },
        "overhead": overhead,
        "excess": excess,
        "in_memory_cpu_ms_per_turn": in_memory_cpu_ms,
        "tokens_per_turn": tokens_per_turn,
        "switched_on": switch_costs,
        "mcp_hop": mcp_hop,
        "first_text": {
            m: {k: dataclasses.asdict(v) for k, v in row.items()} for m, row in first_text.items()
        },
        "notes": notes,
    }


async def pacing(lab: Lab, s: Settings, report: Report) -> dict[str, Any]:
    """Back-to-back turns against turns with think time, on both server settings."""
    servers = [
        ("default", "dev server, no settings"),
        ("tuned", f"dev server, {DEV_SERVER_ARGS[1]}"),
    ]
    paces = [("back-to-back", 0.0), (f"{s.think_ms} ms think time", s.think_ms / 1000)]
    window = max(1, min(20, s.pacing_turns // 4))
    rows, runs, notes = [], [], []
    for server, server_label in servers:
        client = await lab.client(server)
        if client is None:
            notes.append(f"{server_label}: skipped, this run uses a server of the user's.")
            continue
        task_queue = await lab.worker(server)
        for pace, think_s in paces:
            latencies, _, _ = await short_conversations(
                report,
                f"pacing-{server}",
                client,
                task_queue,
                s.pacing_turns,
                PLAIN,
                "scripted",
                think_s,
            )
            first, last, whole = (
                Stats.of(latencies[:window]),
                Stats.of(latencies[-window:]),
                Stats.of(latencies),
            )
            rows.append(
                [server_label, pace, *one_decimal(first.p50, last.p50, whole.p50, whole.p95)]
            )
            runs.append(
                {"server": server, "pace": pace, "latencies_ms": [x * 1000 for x in latencies]}
            )
            if server == "tuned" and not think_s:
                report.goal(
                    "back-to-back turns: no step (p50 of the last turns <= 1.5 x the first)",
                    f"<= {1.5 * first.p50:.1f} ms",
                    f"{last.p50:.1f} ms",
                    last.p50 <= 1.5 * first.p50,
                )
    report.print(
        f"## 2. Pacing: {s.pacing_turns} plain turns in a row, in conversations of "
        f"{SHORT_CONVERSATION_TURNS} (ms)",
        markdown_table(
            ["server", "pace", f"p50, first {window}", f"p50, last {window}", "p50", "p95"], rows
        ),
        *notes,
    )
    return {"turns": s.pacing_turns, "window": window, "runs": runs, "notes": notes}


async def growth(lab: Lab, s: Settings, report: Report) -> dict[str, Any]:
    """Latency and history size as one conversation grows."""
    conversation = await Conversation.start(
        report, "growth", await lab.client(), await lab.worker()
    )
    latencies: list[float] = []
    samples = []
    for turn in [t for t in (1, 10, 100, 1_000, 10_000) if t <= s.growth_turns]:
        latencies += await conversation.turns_of(turn - conversation.turns, same(PLAIN), "scripted")
        events, size = await conversation.history()
        samples.append(
            {
                "turn": turn,
                "p50_ms": Stats.of(latencies[-min(GROWTH_WINDOW, max(1, turn - 1)) :]).p50,
                "run_events": events,
                "run_bytes": size,
                "runs": len(await conversation.runs()),
            }
        )
    if len(samples) >= 3:
        tenth, last = samples[1], samples[-1]
        ratio = last["p50_ms"] / tenth["p50_ms"]
        report.goal(
            f"growth: p50 at turn {last['turn']} against turn {tenth['turn']}",
            "<= 1.25x",
            f"{ratio:.2f}x ({last['p50_ms']:.1f} / {tenth['p50_ms']:.1f} ms)",
            ratio <= 1.25,
        )
    report.print(
        "## 3. Growth: one conversation of plain turns, back to back",
        f"Latency: the p50 of the {GROWTH_WINDOW} turns up to that one, leaving out the first "
        "(turn 1: that turn alone; turn 10: turns 2-10). History: the current run's, which "
        "continue-as-new keeps bounded.",
        markdown_table(
            ["turn", "p50 ms", "events in run", "bytes in run", "runs so far"],
            [
                [x["turn"], f"{x['p50_ms']:.1f}", x["run_events"], x["run_bytes"], x["runs"]]
                for x in samples
            ],
        ),
    )
    return {"samples": samples}


def kills_workers(report: Report, lab: Lab, title: str) -> bool:
    if not lab.spawns_workers:
        report.print(title, "Skipped: it kills workers, and this run uses an external one.")
    return lab.spawns_workers


def kill_row(k: dict[str, Any]) -> list[Any]:
    """A row of the recovery table; with a standby worker no process starts: "-" there."""
    if k.get("standby_worker"):
        after, start, polling = f"{k['after_turn']}, standby worker running", "-", "-"
    else:
        after = k["after_turn"]
        start = f"{k['process_start_to_polling_s']:.2f}"
        polling = f"{k['polling_to_reply_s']:.3f}"
    return [after, k["replayed_events"], start, polling, f"{k['kill_to_reply_s']:.2f}"]


async def recovery(lab: Lab, s: Settings, report: Report) -> dict[str, Any]:
    """How long a conversation waits when its worker is SIGKILLed between turns."""
    title = "## 4. Recovery: the worker SIGKILLed between turns, a new one started"
    if not kills_workers(report, lab, title):
        return {"skipped": "external worker"}
    task_queue = await lab.worker()
    assert task_queue is not None
    conversation = await Conversation.start(report, "recovery", await lab.client(), task_queue)
    kills = []
    for kill_at in s.recovery_kills:
        await conversation.turns_of(kill_at - conversation.turns, same(PLAIN), "scripted")
        victim = lab.newest_worker(task_queue)
        kills.append(await crash(lab, conversation, victim, PLAIN, restart=True))
    victim = lab.newest_worker(task_queue)  # it holds the conversation in its cache
    await (await lab.spawn_worker(task_queue)).ready()
    await conversation.turns_of(1, same(PLAIN), "scripted")
    kills.append(await crash(lab, conversation, victim, PLAIN, restart=False))
    calls = check_model_calls(lab, report, conversation)
    report.print(
        title,
        "The next message is sent right after the kill. A new worker process first imports "
        "its modules (LiteLLM takes most of that) and warms up, then polls; from then on it "
        "replays the conversation's current run and answers. Last row: a second worker was "
        "already polling the task queue, so no process start is waited for.",
        markdown_table(
            [
                "killed after turn",
                "events replayed",
                "start -> polling (s)",
                "polling -> reply (s)",
                "kill -> reply (s)",
            ],
            [kill_row(k) for k in kills],
        ),
        f"Model calls run by the workers for this conversation: {calls} for {conversation.turns} "
        f"turns ({'each exactly once' if calls == conversation.turns else 'MISMATCH'}).",
    )
    last = kills[-2]
    report.goal(
        f"recovery after a kill at turn {last['after_turn']}: new worker polling -> reply",
        "<= 1 s",
        f"{last['polling_to_reply_s']:.3f} s",
        last["polling_to_reply_s"] <= 1,
    )
    report.goal(
        f"cold recovery after a kill at turn {last['after_turn']}: kill -> reply, process "
        "start included",
        "<= 2.5 s",
        f"{last['kill_to_reply_s']:.2f} s",
        last["kill_to_reply_s"] <= 2.5,
    )
    return {"kills": kills, "plan_next_action_runs": calls, "turns": conversation.turns}


async def throughput(lab: Lab, s: Settings, report: Report) -> dict[str, Any]:
    """Turns per second that one worker carries, with conversations running side by side;
    the same for the floor's worker (`bare_temporal.py`); each worker's CPU per turn."""
    client = await lab.client()
    await in_memory_turns(2, PLAIN)  # warm-up
    cpu = time.process_time()
    await in_memory_turns(s.iterations, PLAIN)
    in_memory_cpu_ms = 1000 * (time.process_time() - cpu) / s.iterations
    systems = [("durable agent", await lab.worker()), ("bare Temporal", await lab.floor_worker())]
    results = []
    for system, task_queue in systems:
        if task_queue is None:
            continue
        pid = lab.worker_process(task_queue).pid if lab.spawns_workers else None
        for count in s.throughput_conversations:
            label = f"throughput-{count}"
            if system == "durable agent":
                starts = [
                    Conversation.start(report, label, client, task_queue) for _ in range(count)
                ]
            else:
                starts = [
                    Conversation.start_floor(report, label, client, task_queue, 1)
                    for _ in range(count)
                ]
            conversations = await asyncio.gather(*starts)
            expect = "scripted" if system == "durable agent" else None
            cpu_before = cpu_seconds(pid) if pid else math.nan
            started = time.perf_counter()
            per_conversation = await asyncio.gather(
                *(c.turns_of(s.throughput_turns, same(PLAIN), expect) for c in conversations)
            )
            elapsed = time.perf_counter() - started
            cpu_ms = 1000 * ((cpu_seconds(pid) if pid else math.nan) - cpu_before)
            stats = Stats.of([x for turns in per_conversation for x in turns])
            results.append(
                {
                    "system": system,
                    "conversations": count,
                    "turns": stats.n,
                    "seconds": elapsed,
                    "turns_per_s": stats.n / elapsed,
                    "p50_ms": stats.p50,
                    "p95_ms": stats.p95,
                    "worker_cpu_ms_per_turn": cpu_ms / max(1, stats.n),
                }
            )
    report.print(
        f"## 5. Throughput: one worker, {s.throughput_turns} back-to-back plain turns per "
        "conversation",
        "Worker CPU: user + system time of the worker process during the run (/proc), per "
        f"turn. The same turn in memory takes {in_memory_cpu_ms:.1f} ms of CPU.",
        markdown_table(
            [
                "system",
                "conversations",
                "turns",
                "turns/s",
                "p50 ms",
                "p95 ms",
                "worker CPU ms/turn",
            ],
            [
                [
                    r["system"],
                    r["conversations"],
                    r["turns"],
                    *one_decimal(
                        r["turns_per_s"], r["p50_ms"], r["p95_ms"], r["worker_cpu_ms_per_turn"]
                    ),
                ]
                for r in results
            ],
        ),
    )
    busiest = max(s.throughput_conversations)
    agent = next(
        r for r in results if r["system"] == "durable agent" and r["conversations"] == busiest
    )
    floor = next(
        (r for r in results if r["system"] != "durable agent" and r["conversations"] == busiest),
        None,
    )
    if floor:
        ratio = agent["turns_per_s"] / floor["turns_per_s"]
        report.goal(
            f"throughput with {busiest} conversations, against the floor's",
            ">= 0.8x",
            f"{ratio:.2f}x ({agent['turns_per_s']:.1f} / {floor['turns_per_s']:.1f} turns/s)",
            ratio >= 0.8,
        )
    if lab.spawns_workers:
        ratio = agent["worker_cpu_ms_per_turn"] / in_memory_cpu_ms
        report.goal(
            "worker CPU per turn, against the same turn in memory",
            "<= 2x",
            f"{ratio:.1f}x ({agent['worker_cpu_ms_per_turn']:.1f} / {in_memory_cpu_ms:.1f} ms)",
            ratio <= 2,
        )
    return {
        "turns_per_conversation": s.throughput_turns,
        "in_memory_cpu_ms_per_turn": in_memory_cpu_ms,
        "results": results,
    }


async def long(lab: Lab, s: Settings, report: Report) -> dict[str, Any]:
    """Issue 5's acceptance run: thousands of 1 KB messages, one worker kill, bounded runs."""
    title = (
        f"## 6. Long conversation: {s.long_turns} turns, {s.long_message_chars}-character messages"
    )
    if not kills_workers(report, lab, title):
        return {"skipped": "external worker"}
    filler = FILLER * (s.long_message_chars // len(FILLER) + 1)

    def message(turn: int) -> str:
        head = f"Turn {turn}. "
        return head + filler[: s.long_message_chars - len(head)]

    task_queue = await lab.worker()
    assert task_queue is not None
    conversation = await Conversation.start(report, "long", await lab.client(), task_queue)
    latencies = await conversation.turns_of(s.long_kill_at, message, "scripted")
    victim = lab.newest_worker(task_queue)
    kill = await crash(lab, conversation, victim, message(s.long_kill_at + 1), restart=True)
    latencies += await conversation.turns_of(s.long_turns - conversation.turns, message, "scripted")
    calls = check_model_calls(lab, report, conversation)
    runs = await conversation.runs()
    window = min(100, s.long_turns // 10)
    first, last = Stats.of(latencies[:window]), Stats.of(latencies[-window:])
    largest_bytes = max(size for _, size in runs)
    largest_events = max(events for events, _ in runs)
    report.print(
        title,
        markdown_table(
            [
                "turns",
                "runs",
                "largest run",
                f"p50 first {window}",
                f"p50 last {window}",
                f"kill at {kill['after_turn']}: polling -> reply",
                "kill -> reply",
            ],
            [
                [
                    conversation.turns,
                    len(runs),
                    f"{largest_bytes / 1e6:.2f} MB, {largest_events} events",
                    f"{first.p50:.1f} ms",
                    f"{last.p50:.1f} ms",
                    f"{kill['polling_to_reply_s']:.3f} s",
                    f"{kill['kill_to_reply_s']:.2f} s",
                ]
            ],
        ),
    )
    report.goal(
        "long conversation: largest run history",
        "< 10 MB and < 10 240 events",
        f"{largest_bytes / 1e6:.2f} MB, {largest_events} events",
        largest_bytes < HISTORY_WARNING_BYTES and largest_events < HISTORY_WARNING_EVENTS,
    )
    report.goal(
        f"long conversation: p50 of the last {window} turns vs the first {window}",
        "<= 1.5x",
        f"{last.p50 / first.p50:.2f}x",
        last.p50 <= 1.5 * first.p50,
    )
    report.goal(
        f"long conversation: recovery after a kill at turn {kill['after_turn']}",
        "< 2 s",
        f"{kill['polling_to_reply_s']:.3f} s",
        kill["polling_to_reply_s"] < 2,
    )
    return {
        "turns": conversation.turns,
        "message_chars": s.long_message_chars,
        "runs": len(runs),
        "largest_run_bytes": largest_bytes,
        "largest_run_events": largest_events,
        f"first_{window}_p50_ms": first.p50,
        f"last_{window}_p50_ms": last.p50,
        "recovery": kill,
        "plan_next_action_runs": calls,
    }


def _tokens_cell(tokens_per_turn: dict[str, dict[str, float]], mode: str, kind: str) -> str:
    """Tokens per turn of a row, or "-" where no model spends any (the floor, rejections)."""
    found = tokens_per_turn.get(mode, {}).get(kind)
    return "-" if found is None else f"{found:.0f}"


def switched_on() -> dict[str, dict[str, str]]:
    """Table 2's rows with traces or encryption on (issue 13), and their workers' settings.
    Encryption only if the run does not encrypt every row already."""
    rows = {TRACES_ON: {"OTEL_TRACES_EXPORTER": "console", "TRACES_FILE": os.devnull}}
    if not os.environ.get("ENCRYPTION_KEYS"):
        key_id = BENCHMARK_KEY.partition(":")[0]
        rows[ENCRYPTION_ON] = {"ENCRYPTION_KEYS": BENCHMARK_KEY, "ENCRYPTION_KEY_ID": key_id}
    return rows


def mcp_worker_env(workdir: Path) -> dict[str, str]:
    """The settings of the MCP row's worker: demo_mcp_server.py over stdio, as `demo`."""
    config = workdir / "mcp.json"
    server = {
        "command": sys.executable,
        "args": [str(Path(__file__).with_name("demo_mcp_server.py"))],
    }
    config.write_text(json.dumps({"mcpServers": {"demo": server}}))
    return {"MCP_CONFIG": str(config)}


def costs_against_durable(stats: dict[str, dict[str, Stats]]) -> dict[str, dict[str, Any]]:
    """What each switched-on row adds to the durable row's p50, by kind of turn."""
    durable = stats.get(DURABLE, {})
    return {
        mode: {
            kind: {
                "durable_p50_ms": durable[kind].p50,
                "p50_ms": on.p50,
                "cost_ms": on.p50 - durable[kind].p50,
                "cost_percent": 100 * (on.p50 - durable[kind].p50) / durable[kind].p50,
            }
            for kind, on in row.items()
            if kind in durable
        }
        for mode, row in stats.items()
        if mode in (TRACES_ON, ENCRYPTION_ON)
    }


def workers_needed(sections: Sequence[str], s: Settings) -> list[tuple[str, dict[str, str]]]:
    """(server, worker settings) of the shared workers that these sections use. The MCP
    row's worker starts on its own, when Table 2 first asks for it: each start takes
    seconds of CPU, and these already share two cores."""
    needed = [("tuned", {})]
    if "table2" in sections:
        needed.append(("tuned", {"SCRIPTED_LATENCY_MS": str(s.simulated_latency_ms)}))
        needed += [("tuned", env) for env in switched_on().values()]
    if "pacing" in sections:
        needed.append(("default", {}))
    if "scale" in sections:
        needed.append((ON_DISK, {}))
    return needed


SECTION_RUNNERS: dict[str, Callable[[Lab, Settings, Report], Awaitable[dict[str, Any]]]] = {
    "table2": table2,
    "pacing": pacing,
    "growth": growth,
    "recovery": recovery,
    "throughput": throughput,
    "long": long,
    "programs": programs,
    "scale": scale,
}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Reproduce the paper's Table 2 and measure what it leaves out.",
        epilog=f"Sections: {', '.join(SECTIONS)}; on request: {', '.join(ON_REQUEST)}",
    )
    parser.add_argument("--quick", action="store_true", help="small sizes: under a minute")
    parser.add_argument("--iterations", type=int, help="turns per mode in Table 2")
    parser.add_argument("--sections", default=",".join(SECTIONS), help="comma-separated")
    parser.add_argument(
        "--scale-conversations",
        type=int,
        help="idle conversations of the scale section (default 10 000; fewer: all smaller)",
    )
    parser.add_argument("--json", type=Path, default=Path("benchmark-results.json"), help="output")
    parser.add_argument("--address", help="a Temporal server of yours (default: start dev servers)")
    parser.add_argument(
        "--external-worker",
        action="store_true",
        help="start no worker: use the one on --task-queue (sections that kill workers skip)",
    )
    parser.add_argument(
        "--task-queue", help=f"with --external-worker (default {worker.DEFAULT_TASK_QUEUE})"
    )
    args = parser.parse_args(argv)
    args.sections = [name.strip() for name in args.sections.split(",") if name.strip()]
    known = SECTIONS + ON_REQUEST
    if unknown := [name for name in args.sections if name not in known]:
        parser.error(f"unknown section {', '.join(unknown)}; choose from {', '.join(known)}")
    if args.iterations is not None and args.iterations < 1:
        parser.error("--iterations must be at least 1")
    if args.scale_conversations is not None and args.scale_conversations < 1:
        parser.error("--scale-conversations must be at least 1")
    return args


async def run(args: argparse.Namespace) -> int:
    settings = QUICK if args.quick else Settings()
    if args.iterations:
        settings = dataclasses.replace(settings, iterations=args.iterations)
    if args.scale_conversations:
        settings = dataclasses.replace(settings, scale_conversations=args.scale_conversations)
    address = args.address or os.environ.get("TEMPORAL_ADDRESS")
    external_task_queue = worker.task_queue_name(args.task_queue) if args.external_worker else None
    report = Report()
    sections: dict[str, Any] = {}
    results: dict[str, Any] = {
        "command": " ".join(["uv run performance_benchmark.py", *sys.argv[1:]]),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": machine(),
        "packages": package_versions(),
        "settings": dataclasses.asdict(settings),
        "sections": sections,
    }
    report.print(
        "# Durable Agent Loop benchmark",
        f"`{results['command']}` on {results['machine']['cores']} cores, "
        f"{results['machine']['platform']}, Python {results['machine']['python']}.",
    )
    with tempfile.TemporaryDirectory(prefix="benchmark-") as workdir:
        lab = Lab(Path(workdir), address, external_task_queue)
        try:
            print("Starting dev servers and workers...", file=sys.stderr, flush=True)
            await lab.start_workers(workers_needed(args.sections, settings))
            for name in args.sections:
                print(f"Running {name}...", file=sys.stderr, flush=True)
                started = time.perf_counter()
                section = await SECTION_RUNNERS[name](lab, settings, report)
                sections[name] = {**section, "seconds": round(time.perf_counter() - started, 1)}
            results["server"] = {
                "address": address or "dev servers started by the benchmark",
                "version": await lab.server_version(),
                "dev_server_args": DEV_SERVER_ARGS,
            }
        finally:
            await lab.close()

    report.print(
        "## Goals",
        markdown_table(
            ["goal", "target", "measured", "met"],
            [[g.name, g.target, g.measured, "yes" if g.met else "NO"] for g in report.goals],
        ),
    )
    results["goals"] = [dataclasses.asdict(goal) for goal in report.goals]
    results["failures"] = report.failures
    args.json.write_text(json.dumps(results, indent=2) + "\n")
    print(f"Results written to {args.json}.", file=sys.stderr)
    for failure in report.failures:
        print(f"FAILED: {failure}", file=sys.stderr)
    return 1 if report.failures else 0


def main() -> int:
    args = parse_args()
    load_dotenv()
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    try:
        tracing.setup("durable-agent-benchmark")
        return asyncio.run(run(args))
    except (worker.TemporalUnreachable, RuntimeError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    worker.exit_process(main())
