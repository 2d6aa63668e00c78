"""A small MCP server to try MCP_CONFIG with, offline (docs/tools.md).

It offers two tools: `calculate`, the built-in calculator served over MCP (read-only, so
no approval), and `slow_note`, which takes its time and then writes a note (so it waits
for approval, and leaves time to kill the worker mid-call). `slow_note` keeps each note
under the idempotency key the worker sends in the call's `_meta`: a call that runs again
after a crash is answered again, and not written twice.

    {"mcpServers": {"demo": {"command": "uv", "args": ["run", "demo_mcp_server.py"]}}}

Notes go to DEMO_NOTES_FILE (default demo-notes.jsonl); the server logs each call on stderr,
which the worker passes through to its own.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from pathlib import Path
from typing import Annotated

from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError as McpToolError
from mcp.types import ToolAnnotations
from pydantic import Field

import tools
from mcp_tools import IDEMPOTENCY_KEY

server = MCPServer("demo", log_level="WARNING")
log = logging.getLogger("demo_mcp_server")


@server.tool(annotations=ToolAnnotations(read_only_hint=True))
async def calculate(
    expression: Annotated[str, Field(max_length=tools.MAX_EXPRESSION_CHARS)],
) -> str:
    """Evaluate an arithmetic expression: numbers, + - * / // % ** and parentheses."""
    try:
        return tools.calculate(expression)
    except tools.ToolError as err:
        raise McpToolError(str(err)) from None


@server.tool()
async def slow_note(
    text: Annotated[str, Field(min_length=1, max_length=tools.MAX_NOTE_CHARS)],
    ctx: Context,
    seconds: Annotated[float, Field(ge=0, le=120)] = 15,
) -> str:
    """Save a note, slowly: it takes `seconds` (default 15) before it writes."""
    key = (ctx.request_context.meta or {}).get(IDEMPOTENCY_KEY, "")
    log.warning("slow_note called with key %s: writing in %g s", key, seconds)
    await asyncio.sleep(seconds)
    notes = Path(os.environ.get("DEMO_NOTES_FILE", "demo-notes.jsonl"))
    seen = notes.read_text(encoding="utf-8").split("\n") if notes.exists() else []
    if key and any(json.loads(line).get("key") == key for line in seen if line):
        log.warning("slow_note key %s was written before: not written again", key)
    else:
        with notes.open("a", encoding="utf-8") as file:
            file.write(json.dumps({"key": key, "text": text}) + "\n")
    return f"Saved your note slowly: {text}"


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, format="demo_mcp_server: %(message)s", force=True)
    server.run()
