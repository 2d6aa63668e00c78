"""The scale section's report (issue 25): its tables, and its goals as ratios that mean
the same on any machine. `benchmark_scale.py` measures; this file says what it found.
"""

from __future__ import annotations

import math
import statistics
from typing import TYPE_CHECKING, Any

from benchmark_harness import Report, markdown_table, one_decimal

if TYPE_CHECKING:
    from benchmark_scale import Sizes

TITLE = "## 8. Scale: many conversations on one worker"
MB = 1024 * 1024


def cold_rows(found: dict[str, Any]) -> list[dict[str, Any]]:
    """Per history length: a cached turn's p50 (the turns right after the cold ones, and
    the last turns while the conversations grew), and the cold turns' p50s."""
    rows = []
    for events, grown in found["cached"].items():
        kinds = {k: found[k][events] for k in ("evicted", "after restart") if k in found}
        cached = [x for k in kinds.values() for x in k["cached_ms"]]
        p50 = statistics.median(cached) if cached else grown["p50"]
        row = {"target_events": events, "cached_p50_ms": p50}
        for kind, k in kinds.items():
            row["events"], row["bytes"] = k["events"], k["bytes"]
            row[f"{kind} p50_ms"] = statistics.median(k["cold_ms"]) if k["cold_ms"] else math.nan
            row[f"{kind} ratio"] = row[f"{kind} p50_ms"] / p50
        rows.append(row)
    return rows


def tables(
    report: Report,
    sizes: Sizes,
    cache: int,
    at_once: int,
    servers: dict[str, dict[str, Any]],
    in_memory_cpu_ms: dict[int, float],
) -> None:
    kb = 1024
    report.print(
        f"{TITLE} ({', '.join(servers)})",
        f"One worker (workflow cache {cache} conversations), the dev server tuned, its state "
        "in memory or on disk (SQLite, `--db-filename`). Memory: resident set size (/proc) "
        "of the worker and of the server process.",
        f"Idle sessions: {sizes.conversations} conversations on the server in memory, "
        f"{sizes.conversations_on_disk} on disk, one turn each, {at_once} at a time, then "
        "left idle. Per cached conversation: the worker's growth since the "
        "first, over the conversations the cache took in (it holds at most "
        f"{cache}; past that it evicts the least recently used).",
        markdown_table(
            [
                "server",
                "conversations",
                "cached",
                "worker RSS MB",
                "worker KB / cached conversation",
                "server RSS MB",
                "server KB / conversation",
                "s so far",
            ],
            [
                [
                    label,
                    r["conversations"],
                    r["cached"],
                    *one_decimal(
                        r["worker_rss_bytes"] / MB,
                        r["worker_bytes_per_new_cached"] / kb,
                        r["server_rss_bytes"] / MB,
                        r["server_bytes_per_conversation"] / kb,
                        r["seconds"],
                    ),
                ]
                for label, found in servers.items()
                for r in found["idle"]
            ],
        ),
        "Memory per cached conversation as a conversation grows: conversations at turn "
        f"{sizes.memory_turns[0]} and at turn {sizes.memory_turns[1]}, their context (the "
        "messages the loop keeps, trimmed to the context budget) carried into their first "
        "run as continue-as-new carries it, one turn each, on the restarted worker.",
        markdown_table(
            [
                "server",
                "turn",
                "conversations",
                "context messages",
                "context KB",
                "worker KB / conversation",
            ],
            [
                [
                    label,
                    r["turn"],
                    r["conversations"],
                    r["context_messages"],
                    *one_decimal(r["context_bytes"] / kb, r["worker_bytes_per_conversation"] / kb),
                ]
                for label, found in servers.items()
                for r in found["memory"]
            ],
        ),
        f"Cold turns: {sizes.cold_samples} conversations of each history length (events in "
        "the current run); a turn on each after the idle conversations pushed it out of the "
        "cache (evicted), and after the worker was restarted (SIGTERM, a new process "
        "polling); cached: the turn right after each cold one (p50, ms).",
        markdown_table(
            [
                "server",
                "events",
                "history KB",
                "cached p50",
                "evicted p50",
                "evicted / cached",
                "after restart p50",
                "after restart / cached",
            ],
            [
                [
                    label,
                    f"{r.get('events', r['target_events']):.0f}",
                    f"{r.get('bytes', math.nan) / kb:.1f}",
                    f"{r['cached_p50_ms']:.1f}",
                    *(
                        cell
                        for kind in ("evicted", "after restart")
                        for cell in (
                            (f"{r[kind + ' p50_ms']:.1f}", f"{r[kind + ' ratio']:.1f}x")
                            if kind + " p50_ms" in r
                            else ("-", "-")
                        )
                    ),
                ]
                for label, found in servers.items()
                for r in cold_rows(found["cold"])
            ],
        ),
        f"Waiting for people: conversations each asked to save a note (`save_note` waits "
        f"for approval); worker and server CPU over {sizes.wait_s:g} s while they all wait; "
        "then every call approved at once, timed until every turn has its reply; the notes "
        "file read back, each note counted.",
        markdown_table(
            [
                "server",
                "waiting",
                "worker CPU, % of a core",
                "server CPU, % of a core",
                "worker RSS MB",
                "approve all -> all answered (s)",
                "notes written once",
            ],
            [
                [
                    label,
                    w["conversations"],
                    f"{100 * w['worker_cpu_share_of_a_core']:.2f}",
                    f"{100 * w['server_cpu_share_of_a_core']:.2f}",
                    f"{w['worker_rss_bytes'] / MB:.1f}",
                    f"{w['approve_all_to_all_answered_s']:.2f}",
                    f"{w['notes_written_once']} of {w['conversations']}",
                ]
                for label, found in servers.items()
                for w in [found["waiting"]]
            ],
        ),
        "Busy: conversations sending plain turns back to back, all at once, after one "
        "unmeasured turn each; the agent's worker and the floor's (`bare_temporal.py`, one "
        "no-op activity a turn) at the same concurrency, in two rounds (agent, floor, agent, "
        "floor), so that both meet the machine's drift alike. Worker CPU: the worker process's "
        "user + system time over the run, per turn. In memory: the same turns with no "
        "Temporal, in conversations as long, CPU per turn; durable layer: agent - floor - "
        "in memory.",
        markdown_table(
            [
                "server",
                "conversations",
                "turns each",
                "system",
                "turns/s",
                "p50 ms",
                "p95 ms",
                "worker CPU ms/turn",
                "in memory ms/turn",
                "durable layer ms/turn",
            ],
            [
                [
                    label,
                    b["conversations"],
                    b["turns_each"],
                    system,
                    *one_decimal(
                        b[system]["turns_per_s"],
                        b[system]["p50_ms"],
                        b[system]["p95_ms"],
                        b[system]["worker_cpu_ms_per_turn"],
                    ),
                    *(
                        one_decimal(
                            in_memory_cpu_ms[b["conversations"]],
                            durable_layer_ms(b, in_memory_cpu_ms),
                        )
                        if system == "agent"
                        else ["-", "-"]
                    ),
                ]
                for label, found in servers.items()
                for b in found["busy"]
                for system in ("agent", "floor")
            ],
        ),
    )


def durable_layer_ms(busy: dict[str, Any], in_memory_cpu_ms: dict[int, float]) -> float:
    """The worker CPU per turn that is the durable layer's own: the agent's worker's,
    less the floor's (Temporal's own work for a turn), less the turn's work in memory."""
    agent, floor = busy["agent"], busy["floor"]
    in_memory = in_memory_cpu_ms[busy["conversations"]]
    return agent["worker_cpu_ms_per_turn"] - floor["worker_cpu_ms_per_turn"] - in_memory


def goals(
    report: Report, servers: dict[str, dict[str, Any]], in_memory_cpu_ms: dict[int, float]
) -> None:
    """Issue 25's goals, on each server: ratios that mean the same on any machine."""
    for label, found in servers.items():
        waiting = found["waiting"]
        share = waiting["worker_cpu_share_of_a_core"]
        report.goal(
            f"scale, {label}: worker CPU while {waiting['conversations']} approvals wait",
            "< 1% of one core",
            f"{100 * share:.2f}%",
            share < 0.01,
        )
        deepest = cold_rows(found["cold"])[-1]
        ratios = {
            kind: deepest[f"{kind} ratio"]
            for kind in ("evicted", "after restart")
            if f"{kind} ratio" in deepest
        }
        report.goal(
            f"scale, {label}: cold turn at ~{deepest.get('events', 0):.0f} events against "
            "a cached turn's p50",
            "<= 2x",
            ", ".join(f"{kind} {ratio:.1f}x" for kind, ratio in ratios.items())
            + f" (cached {deepest['cached_p50_ms']:.1f} ms)",
            all(ratio <= 2 for ratio in ratios.values()),
        )
        memory = {r["turn"]: r["worker_bytes_per_conversation"] for r in found["memory"]}
        (first, short), (last, long) = min(memory.items()), max(memory.items())
        report.goal(
            f"scale, {label}: memory per cached conversation, turn {last} against turn {first}",
            "<= 1.25x",
            f"{long / short:.2f}x ({long / 1024:.0f} / {short / 1024:.0f} KB)",
            long <= 1.25 * short,
        )
        for busy in found["busy"]:
            agent, floor = busy["agent"], busy["floor"]
            ratio = agent["turns_per_s"] / floor["turns_per_s"]
            report.goal(
                f"scale, {label}: throughput with {busy['conversations']} conversations, "
                "against the floor's",
                ">= 0.8x",
                f"{ratio:.2f}x ({agent['turns_per_s']:.1f} / {floor['turns_per_s']:.1f} turns/s)",
                ratio >= 0.8,
            )
            floor_ms = floor["worker_cpu_ms_per_turn"]
            own = durable_layer_ms(busy, in_memory_cpu_ms)
            report.goal(
                f"scale, {label}: the durable layer's worker CPU per turn with "
                f"{busy['conversations']} conversations (agent - floor - in memory)",
                "<= 15% of the floor's",
                f"{100 * own / floor_ms:.0f}% ({agent['worker_cpu_ms_per_turn']:.1f} - "
                f"{floor_ms:.1f} - {in_memory_cpu_ms[busy['conversations']]:.1f} = "
                f"{own:.1f} ms)",
                own <= 0.15 * floor_ms,
            )
