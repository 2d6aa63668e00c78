"""The benchmark's scale section (issue 25): many conversations on one worker.

A deployment has thousands of sessions, most of them idle or waiting for a person, a few
busy at any moment. On each dev server, its state in memory and on disk (SQLite,
`--db-filename`: what a person keeps), one worker (`worker.py`, its workflow cache the
default WORKFLOW_CACHE_SIZE) carries, in this order:

  cold     conversations of about 10, 100 and 1 000 history events, built first; their
           turns are timed while cached, after the idle ones pushed them out of the
           cache, and after a worker restart: what replaying a history costs
  idle     N conversations, one turn each, then left alone: worker and server memory
  memory   on the restarted worker, conversations at turn 10 and at turn 1 000, their
           context carried in as continue-as-new carries it: memory per conversation
  waiting  conversations each with a note waiting for approval: the worker's CPU while
           they wait, then all approved at once: time until every turn is answered, and
           each note written once
  busy     50 and 500 conversations sending turns at once, against the floor's worker
           (`bare_temporal.py`) at the same concurrency; worker CPU per turn
"""

from __future__ import annotations

import asyncio
import json
import math
import statistics
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from temporalio.client import Client, WithStartWorkflowOperation, WorkflowUpdateStage
from temporalio.common import WorkflowIDConflictPolicy

import worker
from benchmark_harness import (
    ON_DISK,
    PLAIN,
    TURN_TIMEOUT_S,
    Conversation,
    Lab,
    Report,
    Stats,
    cpu_seconds,
    in_memory_turns,
    markdown_table,
    one_decimal,
    rss_bytes,
    same,
)
from contract import Message, SessionInput, ToolDecision
from workflow import DurableAgentWorkflow

if TYPE_CHECKING:  # performance_benchmark imports this file: no arrow back up at run time.
    from performance_benchmark import Settings

SERVERS = (("tuned", "in memory"), (ON_DISK, "on disk (SQLite)"))
TITLE = "## 8. Scale: many conversations on one worker"
AT_ONCE = 50
"""Conversations started (and their first turn sent) at a time: a crowd, not a stampede."""
MB = 1024 * 1024
T = TypeVar("T")


@dataclass(frozen=True)
class Sizes:
    """The section's sizes, from the number of idle conversations (`--scale-conversations`).
    Below 1 000 it is a development run, and the rest shrinks with it."""

    conversations: int
    conversations_on_disk: int
    """Idle conversations on the server on disk: a tenth of them, at least 1 000, so that
    the run stays near 15 minutes (SQLite is the slower); the worker's side of them is
    the same on either server."""
    approvals: int
    """At most as many as the cache holds: each is asked what it waits for (a query)."""
    busy: tuple[int, ...]
    busy_turns: int
    """Turns of each busy row, shared out among its conversations (at least 3 each)."""
    memory: int
    """Conversations at turn 10, and as many at turn 1 000, for the memory rows."""
    wait_s: float
    """How long the worker's CPU is measured while the approvals wait."""
    cold_samples: int
    """Conversations of each history length."""

    history_events: tuple[int, ...]
    """The history lengths of the cold turns' conversations (events in the current run)."""
    memory_turns: tuple[int, int]
    """The turns at which the memory rows hold their conversations."""

    def busy_turns_each(self, conversations: int) -> int:
        return max(3, self.busy_turns // conversations)

    @classmethod
    def of(cls, conversations: int, cache: int) -> Sizes:
        """Approvals and busy conversations at most as many as the cache holds: past it,
        each of their tasks would replay a history (the cold rows measure that)."""
        full = conversations >= 1_000
        busy = tuple(sorted({min(count, conversations, cache) for count in (AT_ONCE, 500)}))
        return cls(
            conversations=conversations,
            conversations_on_disk=min(conversations, max(1_000, conversations // 10)),
            approvals=min(1_000, conversations, cache),
            busy=busy,
            busy_turns=1_000 if full else 3 * busy[-1],
            memory=min(200, conversations),
            wait_s=20 if full else 1,
            cold_samples=5 if full else 1,
            history_events=(10, 100, 1_000) if full else (10, 100),
            memory_turns=(10, 1_000) if full else (10, 100),
        )


async def scale(lab: Lab, s: Settings, report: Report) -> dict[str, Any]:
    """Every part on each server; the tables put the servers' rows side by side."""
    if not lab.spawns_workers:
        report.print(TITLE, "Skipped: it restarts workers, and this run uses an external one.")
        return {"skipped": "external worker"}
    cache = worker.workflow_cache_size()
    sizes = Sizes.of(s.scale_conversations, cache)
    await in_memory_turns(2, PLAIN)  # warm-up: imports, caches
    # The same turns in memory, in conversations as long as each busy row's: a turn's CPU
    # grows with its context (the scripted model reports no usage, so every call counts
    # the tokens of what it was sent).
    in_memory_cpu_ms = {
        count: await in_memory_cpu_ms_per_turn(sizes.busy_turns_each(count)) for count in sizes.busy
    }
    # A conversation's context at turn 10 and 1 000, as the loop keeps it (the activities
    # trim it to the context budget), in memory: seconds instead of a thousand turns.
    contexts = {}
    for turns in sizes.memory_turns:
        messages: list[Message] = []
        await in_memory_turns(turns - 1, PLAIN, messages)
        contexts[turns] = messages
    servers = {}
    for server, label in SERVERS:
        if await lab.client(server) is None:
            continue  # A server of the user's: only the tuned one's rows.
        print(f"  scale, {label}...", file=sys.stderr, flush=True)
        found = await Server(lab, report, server, label, sizes, cache).run(contexts)
        # Each server's tables as soon as it is done: a run stopped during the second
        # still shows the first's.
        tables(report, sizes, cache, {label: found}, in_memory_cpu_ms)
        goals(report, {label: found}, in_memory_cpu_ms)
        servers[label] = found
    return {
        "sizes": sizes.__dict__,
        "workflow_cache_size": cache,
        "in_memory_cpu_ms_per_turn": in_memory_cpu_ms,
        "servers": servers,
    }


async def in_memory_cpu_ms_per_turn(turns: int, conversations: int = 10) -> float:
    """CPU per turn of `turns` turns after a first one, in memory (no Temporal), as a
    busy row's conversations have them."""
    cpu = 0.0
    for _ in range(conversations):
        messages: list[Message] = []
        await in_memory_turns(1, PLAIN, messages)
        started = time.process_time()
        await in_memory_turns(turns, PLAIN, messages)
        cpu += time.process_time() - started
    return 1000 * cpu / (turns * conversations)


class Server:
    """The section's parts on one dev server, with one worker (restarted once)."""

    def __init__(
        self, lab: Lab, report: Report, server: str, label: str, sizes: Sizes, cache: int
    ) -> None:
        self.lab, self.report, self.server, self.label = lab, report, server, label
        self.sizes, self.cache = sizes, cache
        self.client: Client
        self.task_queue = ""
        self.taken_in = 0
        """Conversations the current worker has taken into its cache (it keeps at most
        `cache`, the most recently used)."""

    @property
    def worker_pid(self) -> int:
        return self.lab.newest_worker(self.task_queue).pid

    @property
    def server_pid(self) -> int:
        pid = self.lab.server_pid(self.server)
        assert pid is not None, f"no process found for the {self.label} server"
        return pid

    async def run(self, contexts: dict[int, list[Message]]) -> dict[str, Any]:
        client, task_queue = await self.lab.client(self.server), await self.lab.worker(self.server)
        assert client is not None and task_queue is not None
        self.client, self.task_queue = client, task_queue
        floor_queue = await self.lab.floor_worker(self.server)
        assert floor_queue is not None
        timer = Timer(self.label)
        deep, cached = await self.deep_conversations()
        timer.lap("deep conversations")
        idle = await self.idle_sessions()
        timer.lap("idle")
        cold: dict[str, Any] = {"cached": {e: asdict(s) for e, s in cached.items()}}
        if self.taken_in > self.cache:  # the idle ones pushed the deep ones out
            cold["evicted"] = await self.cold_turns(deep)
        self.lab.newest_worker(task_queue).stop()
        await (await self.lab.spawn_worker(task_queue, self.server)).ready()
        self.taken_in = 0
        cold["after restart"] = await self.cold_turns(deep)
        self.taken_in = sum(len(conversations) for conversations in deep.values())
        timer.lap("cold")
        memory = await self.memory_per_conversation(contexts)
        timer.lap("memory")
        waiting = await self.waiting_for_people()
        timer.lap("waiting")
        busy = [await self.busy(count, task_queue, floor_queue) for count in self.sizes.busy]
        timer.lap("busy")
        return {
            "idle": idle,
            "cold": cold,
            "memory": memory,
            "waiting": waiting,
            "busy": busy,
            "seconds": timer.laps,
        }

    async def start(self, label: str, session: SessionInput | None = None) -> Conversation:
        self.taken_in += 1
        return await Conversation.start(
            self.report, f"scale-{label}", self.client, self.task_queue, session=session
        )

    async def deep_conversations(self) -> tuple[dict[int, list[Conversation]], dict[int, Stats]]:
        """Conversations of about 10, 100 and 1 000 events, turn by turn; each length's
        last turns, while cached, for comparison with the cold ones."""
        deep: dict[int, list[Conversation]] = {}
        cached: dict[int, Stats] = {}
        for events in self.sizes.history_events:
            conversations = [await self.start("deep") for _ in range(self.sizes.cold_samples)]

            async def grow(conversation: Conversation, events: int = events) -> list[float]:
                latencies = []
                while (await conversation.history())[0] < events:
                    if (latency := await conversation.turn(PLAIN, "scripted")) is None:
                        break  # a failure, reported: the run goes on without this one
                    latencies.append(latency)
                return latencies[-3:]  # warm: the first turns start the run

            last = await asyncio.gather(*(grow(c) for c in conversations))
            deep[events] = conversations
            cached[events] = Stats.of([x for turns in last for x in turns])
        return deep, cached

    async def idle_sessions(self) -> list[dict[str, Any]]:
        """N conversations, one turn each, AT_ONCE at a time; memory at a few counts."""
        n = self.sizes.conversations if self.server == "tuned" else self.sizes.conversations_on_disk
        checkpoints = sorted({c for c in (n // 100, n // 10, n // 4, n // 2, n) if c > 0})
        await asyncio.sleep(1)
        before, held = rss_bytes(self.worker_pid), self.taken_in
        server_before = rss_bytes(self.server_pid)
        rows, done, started = [], 0, time.perf_counter()

        async def one_turn(_: int) -> None:
            # Started with its first message (update-with-start: one request), as a chat
            # client could: thousands of conversations, and the run's time is theirs.
            self.taken_in += 1
            session = f"bench-scale-idle-{uuid.uuid4().hex[:8]}"
            start = WithStartWorkflowOperation(
                DurableAgentWorkflow.run,
                SessionInput(),
                id=session,
                id_conflict_policy=WorkflowIDConflictPolicy.FAIL,
                task_queue=self.task_queue,
            )
            update = self.client.execute_update_with_start_workflow(
                DurableAgentWorkflow.send_message, PLAIN, start_workflow_operation=start
            )
            try:
                reply = await asyncio.wait_for(update, TURN_TIMEOUT_S)
            except Exception as err:
                self.report.failures.append(f"scale, idle {session}: {err!r}")
                return
            if "scripted" not in reply:
                self.report.failures.append(f"scale, idle {session}: reply {reply!r}")

        for checkpoint in checkpoints:
            await limited(one_turn, range(done, checkpoint), AT_ONCE)
            done = checkpoint
            await asyncio.sleep(0.5)  # the last replies' tasks done
            rss, server_rss = rss_bytes(self.worker_pid), rss_bytes(self.server_pid)
            newly_cached = min(held + done, self.cache) - held
            rows.append(
                {
                    "conversations": done,
                    "seconds": time.perf_counter() - started,
                    "cached": min(held + done, self.cache),
                    "worker_rss_bytes": rss,
                    "worker_bytes_per_new_cached": (rss - before) / max(1, newly_cached),
                    "server_rss_bytes": server_rss,
                    "server_bytes_per_conversation": (server_rss - server_before) / done,
                }
            )
            print(f"  scale, {self.label}: {done}/{n} idle", file=sys.stderr, flush=True)
        return rows

    async def cold_turns(self, deep: dict[int, list[Conversation]]) -> dict[int, Any]:
        """A turn on each deep conversation, which the worker no longer holds, then one
        more, cached again."""
        found = {}
        for events, conversations in deep.items():
            sizes = [await c.history() for c in conversations]
            cold = [await c.turn(PLAIN, "scripted") for c in conversations]
            warm = [await c.turn(PLAIN, "scripted") for c in conversations]
            found[events] = {
                "events": statistics.median(e for e, _ in sizes),
                "bytes": statistics.median(b for _, b in sizes),
                "cold_ms": [1000 * x for x in cold if x is not None],
                "cached_ms": [1000 * x for x in warm if x is not None],
            }
        return found

    async def memory_per_conversation(self, contexts: dict[int, list[Message]]) -> list[Any]:
        """Worker memory per cached conversation at turn 10 and 1 000: as many of each as
        the cache holds beside what it holds already, one turn each."""
        count = max(1, min(self.sizes.memory, (self.cache - self.taken_in) // len(contexts)))
        rows = []
        for turn, messages in contexts.items():
            session = SessionInput(messages=messages, earlier_turns=turn - 1)
            await asyncio.sleep(1)
            before = rss_bytes(self.worker_pid)

            async def one_turn(_: int, session: SessionInput = session) -> float | None:
                conversation = await self.start("memory", session)
                return await conversation.turn(PLAIN, "scripted")

            await limited(one_turn, range(count), AT_ONCE)
            await asyncio.sleep(1)
            rows.append(
                {
                    "turn": turn,
                    "conversations": count,
                    "context_messages": len(messages) + 2,
                    "context_bytes": len(json.dumps([m.content for m in messages])),
                    "worker_bytes_per_conversation": (rss_bytes(self.worker_pid) - before) / count,
                }
            )
        return rows

    async def waiting_for_people(self) -> dict[str, Any]:
        """Conversations each with a note waiting for approval; all approved at once."""
        tag = uuid.uuid4().hex[:6]
        notes = [f"scale {tag} {i}" for i in range(self.sizes.approvals)]

        async def ask(note: str) -> tuple[Conversation, Any, str]:
            conversation = await self.start("waiting")
            update = await conversation.handle.start_update(
                DurableAgentWorkflow.send_message,
                f"note: {note}",
                wait_for_stage=WorkflowUpdateStage.ACCEPTED,
            )
            while not (
                pending := await conversation.handle.query(DurableAgentWorkflow.pending_approvals)
            ):
                await asyncio.sleep(0.2)
            return conversation, update, pending[0].call_id

        waiting = await limited(ask, notes, AT_ONCE)
        await asyncio.sleep(1)
        pid, server_pid = self.worker_pid, self.server_pid
        cpu, server_cpu = cpu_seconds(pid), cpu_seconds(server_pid)
        await asyncio.sleep(self.sizes.wait_s)
        worker_share = (cpu_seconds(pid) - cpu) / self.sizes.wait_s
        server_share = (cpu_seconds(server_pid) - server_cpu) / self.sizes.wait_s
        rss = rss_bytes(pid)
        started = time.perf_counter()
        await asyncio.gather(
            *(
                c.handle.execute_update(
                    DurableAgentWorkflow.decide_tool_call, ToolDecision(call_id, True)
                )
                for c, _, call_id in waiting
            )
        )
        replies = await asyncio.gather(*(update.result() for _, update, _ in waiting))
        elapsed = time.perf_counter() - started
        for note, reply in zip(notes, replies, strict=True):
            if reply != f"Saved your note: {note}":
                self.report.failures.append(f"scale, waiting: reply {reply!r} for {note!r}")
        written = [
            json.loads(line)["text"]
            for line in (self.lab.workdir / "notes.jsonl").read_text().splitlines()
        ]
        counts = {note: 0 for note in notes}
        for text in written:
            if text in counts:
                counts[text] += 1
        if wrong := [note for note, n in counts.items() if n != 1]:
            self.report.failures.append(f"scale, waiting: {len(wrong)} notes not written once")
        return {
            "conversations": len(waiting),
            "wait_s": self.sizes.wait_s,
            "worker_cpu_share_of_a_core": worker_share,
            "server_cpu_share_of_a_core": server_share,
            "worker_rss_bytes": rss,
            "approve_all_to_all_answered_s": elapsed,
            "notes_written_once": sum(1 for n in counts.values() if n == 1),
        }

    async def busy(self, count: int, task_queue: str, floor_queue: str) -> dict[str, Any]:
        """`count` conversations sending turns back to back, on the agent's worker and on
        the floor's, one after the other; each after one unmeasured turn."""
        turns = self.sizes.busy_turns_each(count)
        found: dict[str, Any] = {"conversations": count, "turns_each": turns}
        for system, queue in (("agent", task_queue), ("floor", floor_queue)):

            async def start(_: int, system: str = system, queue: str = queue) -> Conversation:
                if system == "agent":
                    conversation = await self.start("busy")
                else:
                    conversation = await Conversation.start_floor(
                        self.report, "scale-busy-floor", self.client, queue, 1
                    )
                await conversation.turn(PLAIN, None)
                return conversation

            conversations = await limited(start, range(count), AT_ONCE)
            pid = self.lab.newest_worker(queue).pid
            expect = "scripted" if system == "agent" else None
            cpu, started = cpu_seconds(pid), time.perf_counter()
            per_conversation = await asyncio.gather(
                *(c.turns_of(turns, same(PLAIN), expect) for c in conversations)
            )
            elapsed = time.perf_counter() - started
            cpu_ms = 1000 * (cpu_seconds(pid) - cpu)
            stats = Stats.of([x for latencies in per_conversation for x in latencies])
            found[system] = {
                "turns": stats.n,
                "turns_per_s": stats.n / elapsed,
                "p50_ms": stats.p50,
                "p95_ms": stats.p95,
                "worker_cpu_ms_per_turn": cpu_ms / max(1, stats.n),
            }
        return found


class Timer:
    """How long each part took, on stderr as it goes and in the results."""

    def __init__(self, label: str) -> None:
        self.label, self.laps, self._last = label, {}, time.perf_counter()

    def lap(self, part: str) -> None:
        now = time.perf_counter()
        self.laps[part] = round(now - self._last, 1)
        self._last = now
        print(f"  scale, {self.label}: {part} {self.laps[part]} s", file=sys.stderr, flush=True)


async def limited(
    work: Callable[[Any], Awaitable[T]], items: Iterable[Any], at_once: int
) -> list[T]:
    """`work` on every item, at most `at_once` at a time; the results in order."""
    gate = asyncio.Semaphore(at_once)

    async def one(item: Any) -> T:
        async with gate:
            return await work(item)

    return await asyncio.gather(*(one(item) for item in items))


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
        f"{sizes.conversations_on_disk} on disk, one turn each, {AT_ONCE} at a time, then "
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
        "unmeasured turn each; the agent's worker, then the floor's (`bare_temporal.py`, one "
        "no-op activity a turn) at the same concurrency. Worker CPU: the worker process's "
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
