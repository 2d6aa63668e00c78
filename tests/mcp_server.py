"""A real MCP server for the tests, written with the SDK's server API (MCPServer, which
was FastMCP before mcp 2). It appends every call it receives to CALLS_FILE, one JSON line
each (tool, arguments, the idempotency key of its `_meta`, the Authorization header), so
a test can tell how many times a call reached it.

    python tests/mcp_server.py                 # stdio
    python tests/mcp_server.py --http PORT     # streamable HTTP at http://127.0.0.1:PORT/mcp

TOOL_LIST=renamed serves `define` in place of `lookup`: the server's tool list changed.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Annotated

from mcp.server.mcpserver import Context, MCPServer
from mcp.types import CallToolResult, TextContent, ToolAnnotations
from pydantic import Field

READ_ONLY = ToolAnnotations(read_only_hint=True)
server = MCPServer("test", log_level="WARNING")


def record(tool: str, arguments: dict, ctx: Context) -> int:
    """Append the call to CALLS_FILE; how many calls with its key it has seen, this one too."""
    meta = ctx.request_context.meta or {}
    request = ctx.request_context.request
    call = {
        "tool": tool,
        "arguments": arguments,
        "key": meta.get("idempotencyKey"),
        "authorization": request.headers.get("authorization") if request is not None else None,
    }
    calls_file = Path(os.environ["CALLS_FILE"])
    with calls_file.open("a", encoding="utf-8") as calls:
        calls.write(json.dumps(call) + "\n")
    lines = calls_file.read_text(encoding="utf-8").splitlines()
    return sum(1 for line in lines if json.loads(line)["key"] == call["key"])


async def lookup(word: Annotated[str, Field(max_length=50)], ctx: Context) -> str:
    """Say what a word is."""
    record("lookup", {"word": word}, ctx)
    return f"{word}: a word of {len(word)} letters"


if os.environ.get("TOOL_LIST") == "renamed":
    server.add_tool(lookup, name="define", annotations=READ_ONLY)
else:
    server.add_tool(lookup, annotations=READ_ONLY)


@server.tool()
def write_entry(text: str, ctx: Context) -> str:
    """Write an entry into the log (a tool that changes something)."""
    record("write_entry", {"text": text}, ctx)
    return f"Wrote: {text}"


@server.tool(annotations=READ_ONLY)
def broken(ctx: Context) -> str:
    """A tool with a bug: it raises."""
    record("broken", {}, ctx)
    raise RuntimeError("the disk is on fire")


@server.tool(annotations=READ_ONLY)
def refuse(reason: str, ctx: Context) -> CallToolResult:
    """A tool that answers with an error result (isError)."""
    record("refuse", {"reason": reason}, ctx)
    return CallToolResult(content=[TextContent(type="text", text=reason)], is_error=True)


@server.tool()
async def slow(seconds: float, ctx: Context) -> str:
    """Take `seconds` to answer (a slow tool that changes something)."""
    record("slow", {"seconds": seconds}, ctx)
    await asyncio.sleep(seconds)
    return f"Done after {seconds:g} s"


@server.tool(annotations=READ_ONLY)
def crash_once(ctx: Context) -> str:
    """End the server process in the middle of the first call with a key; answer the next."""
    if record("crash_once", {}, ctx) == 1:
        os._exit(1)
    return "Still here"


if __name__ == "__main__":
    if sys.argv[1:2] == ["--http"]:
        server.run("streamable-http", port=int(sys.argv[2]))
    else:
        server.run()
