"""Tools from typed Python functions: the `@tool` decorator, and the modules TOOL_MODULES names.

    from function_tools import tool

    @tool
    def shout(text: str) -> str:
        \"\"\"Repeat the text in capitals.\"\"\"
        return text.upper()

The function's signature is the tool's schema: pydantic builds the JSON Schema the model
is offered from the parameters' type hints (limits too: `Annotated[str, Field(max_length=
200)]`), and the same model checks the arguments the model writes before the function
runs. The first paragraph of the docstring is the description the model reads. A sync
function runs in a worker thread, so it never stalls the worker's event loop (workflow
tasks, other activities, heartbeats); an async one is awaited. Either may call
`temporalio.activity.info()`: a tool always runs inside `execute_tool`.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import pydantic
import pydantic_core

from toolbox import Tool, ToolError

F = TypeVar("F", bound=Callable[..., Any])
_DECLARED = "__agent_tool__"


@dataclass(frozen=True)
class _Declaration:
    name: str | None = None
    needs_approval: bool = False


@typing.overload
def tool(function: F, /) -> F: ...
@typing.overload
def tool(*, name: str | None = None, needs_approval: bool = False) -> Callable[[F], F]: ...
def tool(
    function: F | None = None, /, *, name: str | None = None, needs_approval: bool = False
) -> F | Callable[[F], F]:
    """Declare a function (or method) a tool: `@tool`, or `@tool(needs_approval=True)` for
    one whose calls wait for a person's yes. `name` defaults to the function's. The
    function itself is returned unchanged, still callable as before."""

    def declare(declared: F) -> F:
        setattr(declared, _DECLARED, _Declaration(name, needs_approval))
        return declared

    return declare(function) if function is not None else declare


def function_tool(function: Callable[..., Any], source: str = "built in") -> Tool:
    """The tool a typed function declares. ValueError naming it if it cannot be one: a
    parameter without a type hint, *args or **kwargs, no docstring."""
    declared = getattr(function, _DECLARED, None) or _Declaration()
    name = declared.name or function.__name__
    where = f"{function.__module__}.{function.__qualname__}"
    try:
        hints = typing.get_type_hints(function, include_extras=True)
    except Exception as err:  # A hint naming what the module never imported, say.
        raise ValueError(f"tool {where}: its type hints do not resolve ({err})") from None
    fields: dict[str, Any] = {}
    for parameter in inspect.signature(function).parameters.values():
        if parameter.kind not in (parameter.POSITIONAL_OR_KEYWORD, parameter.KEYWORD_ONLY):
            raise ValueError(
                f"tool {where}: parameter {parameter.name!r} must be a plain named parameter "
                "(the model passes arguments by name)"
            )
        if parameter.name not in hints:
            raise ValueError(
                f"tool {where}: parameter {parameter.name!r} has no type hint; the hints "
                "are the schema the model's arguments are checked against"
            )
        default = ... if parameter.default is parameter.empty else parameter.default
        fields[parameter.name] = (hints[parameter.name], default)
    description = (inspect.getdoc(function) or "").split("\n\n")[0].strip()
    if not description:
        raise ValueError(
            f"tool {where} has no docstring: its first paragraph is what the model reads"
        )
    arguments = pydantic.create_model(
        f"{name}_arguments", __config__=pydantic.ConfigDict(extra="forbid"), **fields
    )

    async def call(given: Any) -> str:
        try:
            checked = arguments.model_validate(given)
        except pydantic.ValidationError as err:
            raise ToolError(f"invalid arguments for {name}: {_reasons(err)}") from None
        values = {field: getattr(checked, field) for field in fields}
        if inspect.iscoroutinefunction(function):
            result = await function(**values)
        else:  # Off the event loop: contextvars (the activity's info) go along.
            result = await asyncio.to_thread(function, **values)
        return result if isinstance(result, str) else pydantic_core.to_json(result).decode()

    schema = _untitled(arguments.model_json_schema())
    return Tool(name, description, schema, call, declared.needs_approval, source)


def module_tools(modules: str) -> list[Tool]:
    """Every tool declared in the modules of TOOL_MODULES (comma-separated names). The
    tools a module imports from elsewhere are that module's, not this one's. ValueError
    naming the module if one does not import or declares no tool."""
    tools = []
    for module_name in (name.strip() for name in modules.split(",") if name.strip()):
        try:
            module = importlib.import_module(module_name)
        except Exception as err:
            raise ValueError(
                f"TOOL_MODULES: {module_name} does not import: {type(err).__name__}: {err}"
            ) from None
        declared = [
            value
            for value in vars(module).values()
            if hasattr(value, _DECLARED) and getattr(value, "__module__", None) == module_name
        ]
        if not declared:
            raise ValueError(f"TOOL_MODULES: {module_name} declares no tool (mark one with @tool)")
        tools += [function_tool(function, source=module_name) for function in declared]
    return tools


def _reasons(err: pydantic.ValidationError) -> str:
    """Where and why, without the rejected value: the model has it, and it can be huge."""
    return "; ".join(
        f"{'.'.join(map(str, problem['loc']))}: {problem['msg']}"
        if problem["loc"]
        else problem["msg"]
        for problem in err.errors(include_url=False, include_input=False)
    )


def _untitled(schema: dict[str, Any]) -> dict[str, Any]:
    """Pydantic's schema without the titles it derives from names: noise in every request."""
    schema.pop("title", None)
    for field in schema.get("properties", {}).values():
        field.pop("title", None)
    return schema
