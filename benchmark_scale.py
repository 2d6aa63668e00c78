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

Its tables and goals are in `benchmark_scale_report.py`.
"""

from __future__ import annotations

import asyncio
import json
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
    rss_bytes,
    same,
)
from benchmark_scale_report import TITLE, goals, tables
from contract import Message, SessionInput, ToolDecision
from workflow import DurableAgentWorkflow

if TYPE_CHECKING:  # performance_benchmark imports this file: no arrow back up at run time.
    from performance_benchmark import Settings

SERVERS = (("tuned", "in memory"), (ON_DISK, "on disk (SQLite)"))
AT_ONCE = 50
"""Conversations started (and their first turn sent) at a time: a crowd, not a stampede."""
T = TypeVar("T")


@dataclass(frozen=True)
class Sizes:
    """The section's sizes, from the number of idle conversations (`--scale-conversations`).
    Below 1 000 it is a development run, and the rest shrinks with it."""

    conversations: int
    conversations_on_disk: int
    """Idle conversations on the server on disk: a tenth of them, at least 1 000, so that
    the run stays within reach (SQLite is the slower); the worker's side of them is
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
        busy = tuple(sorted({min(count, conversations, cache) for count in (50, 500)}))
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
    """Every part on each server, in turn; each server's tables as soon as it is done."""
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
        tables(report, sizes, cache, AT_ONCE, {label: found}, in_memory_cpu_ms)
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
        the floor's, each after one unmeasured turn; in two rounds (agent, floor, agent,
        floor), so that both meet the machine's drift alike."""
        turns = self.sizes.busy_turns_each(count)
        systems = {"agent": task_queue, "floor": floor_queue}

        async def start(system: str) -> Conversation:
            if system == "agent":
                conversation = await self.start("busy")
            else:
                conversation = await Conversation.start_floor(
                    self.report, "scale-busy-floor", self.client, floor_queue, 1
                )
            await conversation.turn(PLAIN, None)
            return conversation

        conversations = {
            system: await limited(start, [system] * count, AT_ONCE) for system in systems
        }
        latencies: dict[str, list[float]] = {system: [] for system in systems}
        seconds = dict.fromkeys(systems, 0.0)
        cpu_s = dict.fromkeys(systems, 0.0)
        for share in (turns - turns // 2, turns // 2):
            for system, queue in systems.items():
                pid = self.lab.newest_worker(queue).pid
                expect = "scripted" if system == "agent" else None
                cpu, started = cpu_seconds(pid), time.perf_counter()
                per_conversation = await asyncio.gather(
                    *(c.turns_of(share, same(PLAIN), expect) for c in conversations[system])
                )
                seconds[system] += time.perf_counter() - started
                cpu_s[system] += cpu_seconds(pid) - cpu
                latencies[system] += [x for measured in per_conversation for x in measured]
        found: dict[str, Any] = {"conversations": count, "turns_each": turns}
        for system in systems:
            stats = Stats.of(latencies[system])
            found[system] = {
                "turns": stats.n,
                "turns_per_s": stats.n / seconds[system],
                "p50_ms": stats.p50,
                "p95_ms": stats.p95,
                "worker_cpu_ms_per_turn": 1000 * cpu_s[system] / max(1, stats.n),
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
