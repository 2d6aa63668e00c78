"""The floor: what a turn costs on bare Temporal, with none of the agent's own work.

A turn of the agent is an update that runs activities: one (a plain turn: the model
call) or three (a tool turn: model, tool, model). `BareTurnWorkflow` does exactly that
with no-op activities and tiny payloads, on the same server, with its worker in its own
process like `worker.py`. The benchmark times both with the same driver, so

    excess = durable turn - floor - in-memory turn

is what the durable layer of this project adds beyond Temporal itself and beyond the
agent's own work (docs/performance.md).

    uv run bare_temporal.py --address HOST:PORT --task-queue NAME   # the floor's worker
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from datetime import timedelta

from temporalio import activity, workflow
from temporalio.worker import Worker

READY_LINE = "Polling task queue"


@activity.defn
async def no_op(step: int) -> int:
    return step


@workflow.defn
class BareTurnWorkflow:
    """A conversation with no agent in it: each message runs `activities` no-ops."""

    def __init__(self) -> None:
        self._ended = False

    @workflow.run
    async def run(self) -> None:
        await workflow.wait_condition(lambda: self._ended)
        await workflow.wait_condition(workflow.all_handlers_finished)

    @workflow.update
    async def send_message(self, activities: int) -> int:
        # The tool turn's shape: model, then tool, then model, one after the other.
        for step in range(activities):
            await workflow.execute_activity(
                no_op, step, start_to_close_timeout=timedelta(seconds=30)
            )
        return activities

    @workflow.signal
    def end(self) -> None:
        self._ended = True


async def main() -> None:
    import worker  # The same connection (and data converter) as the agent's worker.

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--address", required=True)
    parser.add_argument("--task-queue", required=True)
    args = parser.parse_args()
    client = await worker.connect(args.address)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    async with Worker(
        client,
        task_queue=args.task_queue,
        workflows=[BareTurnWorkflow],
        activities=[no_op],
        sticky_queue_schedule_to_start_timeout=worker.STICKY_TIMEOUT,
    ):
        print(f"{READY_LINE} '{args.task_queue}'.", file=sys.stderr, flush=True)
        await stop.wait()


if __name__ == "__main__":
    asyncio.run(main())
