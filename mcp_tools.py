"""Tools from MCP servers: the servers MCP_CONFIG lists, each tool a `Tool` of its own.

The file has the format MCP clients keep (`{"mcpServers": {"name": {"command", "args",
"env"} | {"url", "headers"}}}`): a command is started and spoken to over stdio, a URL over
streamable HTTP, both with the official `mcp` SDK. The worker keeps one session per
server, opened at start, where it lists the server's tools; a tool `lookup` of server
`docs` is offered as `docs__lookup`, a name no other server's tool can take. A server
that cannot start stops the worker at start: a worker that silently lacks tools would
offer the model other tools than its peers on the same task queue.

Each call is an `execute_tool` activity like any other. Failures, classified here:

| failure                                    | who sees it | how                             |
|--------------------------------------------|-------------|---------------------------------|
| arguments the tool's inputSchema refuses   | the model   | tool error, before any call     |
| a result marked `isError`; an error answer | the model   | tool error, not retried         |
| (JSON-RPC) from the server                 |             |                                 |
| the connection fails or closes, no answer  | Temporal    | retried; the next attempt opens |
|                                            |             | a new session first             |

An MCP call is not exactly-once: a worker that dies mid-call leaves Temporal no way to
know whether the server acted, and the call runs again on the next worker. Each call
carries an idempotency key in its `_meta` (workflow id / run id / activity id, the same
for every attempt of that call), with which a server can do what `save_note` does.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import sys
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx2
import jsonschema
import mcp
from mcp.client.stdio import stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp.types import CONNECTION_CLOSED, REQUEST_TIMEOUT, CallToolResult
from temporalio import activity
from temporalio.exceptions import ApplicationError, ApplicationErrorCategory

from toolbox import Tool, ToolError

CONNECT_TIMEOUT_S = 30.0
IDEMPOTENCY_KEY = "idempotencyKey"
"""The `_meta` entry of every call that names it: the same for each attempt of one call."""
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")
_TRANSPORT_CODES = (CONNECTION_CLOSED, REQUEST_TIMEOUT)
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class McpServer:
    """One entry of the config file: a command to run (stdio) or a URL (streamable HTTP)."""

    name: str
    command: str = ""
    args: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    url: str = ""
    headers: dict[str, str] = field(default_factory=dict)

    def describe(self) -> str:
        return f"stdio: {' '.join([self.command, *self.args])}" if self.command else self.url


def servers_in(path: Path) -> list[McpServer]:
    """The servers a config file lists; ValueError naming the file and entry if malformed.
    Entries with `"disabled": true` are left out; keys this client has no use for, ignored."""
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise ValueError(f"MCP_CONFIG={path}: cannot read it as JSON ({err})") from None
    entries = config.get("mcpServers") if isinstance(config, dict) else None
    if not isinstance(entries, dict):
        raise ValueError(f'MCP_CONFIG={path}: expected {{"mcpServers": {{"name": {{...}}}}}}')
    servers = []
    for name, entry in entries.items():
        where = f"MCP_CONFIG={path}, server {name!r}"
        if not isinstance(entry, dict) or not (entry.get("command") or entry.get("url")):
            raise ValueError(f"{where}: give it a command (stdio) or a url (streamable HTTP)")
        if entry.get("type") == "sse" or str(entry.get("url", "")).rstrip("/").endswith("/sse"):
            raise ValueError(f"{where}: SSE is not supported; give its streamable HTTP url")
        if entry.get("disabled") is True:
            continue
        try:
            server = McpServer(
                _UNSAFE.sub("_", name),
                command=_checked(entry.get("command", ""), str),
                args=_checked(entry.get("args", []), list, str),
                env=_checked(entry.get("env", {}), dict, str),
                url=_checked(entry.get("url", ""), str),
                headers=_checked(entry.get("headers", {}), dict, str),
            )
        except TypeError:
            raise ValueError(
                f"{where}: command and url are strings, args a list of strings, "
                "env and headers objects of strings"
            ) from None
        servers.append(server)
    return servers


def _checked(value: Any, kind: type, item: type | None = None) -> Any:
    """`value` if it is a `kind` (of `item`s, keys and values alike); else TypeError."""
    items = [*value, *value.values()] if isinstance(value, dict) else value
    if not isinstance(value, kind) or (item and not all(isinstance(i, item) for i in items)):
        raise TypeError(value)
    return value


class McpSession:
    """This worker's one session with one server: opened at start, and opened again by
    the first call after a transport failure."""

    def __init__(self, server: McpServer) -> None:
        self.server = server
        self._client: mcp.Client | None = None
        self._close: asyncio.Event | None = None
        self._holder: asyncio.Task[None] | None = None
        self._opening = asyncio.Lock()

    async def tools(self) -> list[mcp.types.Tool]:
        """Every tool the server lists, page by page."""
        client, listed, cursor = await self._connected(), [], None
        while True:
            page = await client.list_tools(cursor=cursor)
            listed += page.tools
            if not (cursor := page.next_cursor):
                return listed

    async def call(self, tool: str, arguments: dict[str, Any], key: str) -> CallToolResult:
        """The server's result; ToolError if it answers with an error, a retryable
        ApplicationError if the connection fails (the next call reconnects)."""
        try:
            client = await self._connected()
        except Exception as err:
            raise self.unavailable(_first(err)) from None
        try:
            return await client.call_tool(tool, arguments, meta={IDEMPOTENCY_KEY: key})
        except mcp.MCPError as err:
            if err.code not in _TRANSPORT_CODES:
                raise ToolError(f"the MCP server {self.server.name} refused: {err}") from None
            failure: BaseException = err
        except (OSError, httpx2.TransportError, TimeoutError) as err:
            failure = err
        await self._drop(client)
        raise self.unavailable(failure)

    def unavailable(self, err: BaseException) -> ApplicationError:
        """A transport failure as Temporal retries it: one line in the worker's log."""
        return ApplicationError(
            f"MCP server {self.server.name} ({self.server.describe()}) is unreachable: "
            f"{type(err).__name__}: {err}",
            type="McpServerUnavailable",
            category=ApplicationErrorCategory.BENIGN,
        )

    async def close(self) -> None:
        if self._client is not None:
            await self._drop(self._client)

    async def _connected(self) -> mcp.Client:
        async with self._opening:
            if self._client is None:
                opened = asyncio.get_running_loop().create_future()
                close = asyncio.Event()
                holder = asyncio.create_task(self._hold(opened, close))
                try:
                    self._client = await asyncio.wait_for(asyncio.shield(opened), CONNECT_TIMEOUT_S)
                except asyncio.TimeoutError:
                    holder.cancel()
                    raise TimeoutError(f"no session within {CONNECT_TIMEOUT_S:g} s") from None
                except BaseException:
                    holder.cancel()
                    raise
                self._close, self._holder = close, holder
            return self._client

    async def _hold(self, opened: asyncio.Future[mcp.Client], close: asyncio.Event) -> None:
        """Enter the session, and leave it when told: the SDK's anyio task groups want one
        task to do both, and calls come from many activities' tasks."""
        try:
            async with AsyncExitStack() as stack:
                if self.server.command:
                    parameters = mcp.StdioServerParameters(
                        command=self.server.command, args=self.server.args, env=self.server.env
                    )
                    transport = stdio_client(parameters, errlog=sys.stderr)
                else:
                    http = httpx2.AsyncClient(headers=self.server.headers, timeout=30.0)
                    await stack.enter_async_context(http)
                    transport = streamable_http_client(self.server.url, http_client=http)
                client = await stack.enter_async_context(mcp.Client(transport))
                opened.set_result(client)
                await close.wait()
        except Exception as err:
            if not opened.done():
                opened.set_exception(_first(err))
            else:
                log.warning("MCP server %s: session ended: %s", self.server.name, _first(err))
        finally:
            if opened.done() and not opened.exception() and self._client is opened.result():
                self._client = None

    async def _drop(self, client: mcp.Client) -> None:
        """Close the session `client` belongs to, unless another call has already."""
        async with self._opening:
            if self._client is not client or self._close is None or self._holder is None:
                return
            self._client = None
            self._close.set()
            try:
                await asyncio.wait_for(self._holder, 5)
            except BaseException:  # Its failure is logged; the next call opens anew.
                self._holder.cancel()


def _first(err: Exception) -> Exception:
    """The first real failure inside anyio's exception groups."""
    while group := getattr(err, "exceptions", None):
        err = group[0]
    return err


def server_tools(session: McpSession, listed: Sequence[mcp.types.Tool]) -> list[Tool]:
    """The tools of one server, under names no other server's can take. A tool whose
    annotations do not say it only reads needs approval (APPROVAL_REQUIRED_TOOLS may
    override)."""
    return [_tool(session, listed_tool) for listed_tool in listed]


def _tool(session: McpSession, listed: mcp.types.Tool) -> Tool:
    name = f"{session.server.name}__{_UNSAFE.sub('_', listed.name)}"
    schema = dict(listed.input_schema)
    validator = jsonschema.validators.validator_for(schema, jsonschema.Draft202012Validator)(schema)

    async def call(arguments: Any) -> str:
        if problem := jsonschema.exceptions.best_match(validator.iter_errors(arguments)):
            raise ToolError(f"invalid arguments for {name}: {_reason(problem)}")
        info = activity.info()
        key = f"{info.workflow_id}/{info.workflow_run_id}/{info.activity_id}"
        result = await session.call(listed.name, arguments, key)
        if result.is_error:
            raise ToolError(_content(result) or f"{name} failed and said nothing more")
        return _content(result)

    read_only = bool(listed.annotations and listed.annotations.read_only_hint)
    description = listed.description or listed.title or listed.name
    source = f"MCP server {session.server.name}, {session.server.describe()}"
    return Tool(name, description, schema, call, needs_approval=not read_only, source=source)


def _reason(problem: jsonschema.ValidationError) -> str:
    """jsonschema's message, with the value it quotes cut short: the reason must survive
    the cap on tool results, and the model has the value already."""
    where = problem.json_path.removeprefix("$").lstrip(".")
    quoted = repr(problem.instance)
    message = problem.message
    if len(quoted) > 80:
        message = message.replace(quoted, f"{quoted[:40]}…({len(quoted)} characters)")
    return f"{where}: {message}" if where else message


def _content(result: CallToolResult) -> str:
    """What the model reads: the text blocks; other kinds of content are only named."""
    parts = []
    for block in result.content:
        if block.type == "text":
            parts.append(block.text)
        elif block.type == "resource" and hasattr(block.resource, "text"):
            parts.append(block.resource.text)
        else:
            parts.append(f"[{block.type} content, not shown]")
    if not parts and result.structured_content is not None:
        parts.append(json.dumps(result.structured_content, ensure_ascii=False))
    return "\n".join(parts)


@asynccontextmanager
async def connected(servers: Sequence[McpServer]) -> AsyncIterator[list[Tool]]:
    """Open a session with each server and list its tools; close them all on leaving.
    ValueError naming the server if one cannot start or answer."""
    sessions = [McpSession(server) for server in servers]
    try:
        tools = []
        for session in sessions:
            try:
                tools += server_tools(session, await session.tools())
            except Exception as err:
                first, server = _first(err), session.server
                raise ValueError(
                    f"MCP server {server.name} ({server.describe()}) did not start: "
                    f"{type(first).__name__}: {first}; fix MCP_CONFIG or the server"
                ) from None
        yield tools
    finally:
        for session in sessions:
            await session.close()
