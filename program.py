"""The interpreter of `run_program`: the model writes a short program, the workflow runs it.

No clock, no randomness, no I/O, and no state between runs: the workflow runs this code
itself, and replay runs the program again, getting each tool call's result from the
history. The sandbox passes it through like `contract.py`. It parses with `ast` and walks
the tree itself, so no line of the model's program is ever handed to `exec` or `eval`, and
no Python object is reachable from it but the plain values below.

The language, a subset of Python (docs/programs.md has it with examples):
- values: numbers, text, True/False/None, lists, tuples and dicts (keys: text, numbers,
  booleans or None); no sets, whose order is not fixed;
- statements: assignment (with unpacking, `x[k] = v`, `+=`), `if`/`elif`/`else`, `for`
  (with `break`, `continue`, `else`) over lists, tuples, ranges, texts and dicts;
- expressions: arithmetic (+ - * / // % **), comparisons, `and`/`or`/`not`, `a if c else b`,
  f-strings, indexing and slicing, list and dict comprehensions;
- calls: the agent's tools by name with keyword arguments, `weather(city="Oslo")`; the
  built-in functions in `FUNCTIONS`; the methods in `METHODS`; and `parallel(...)`, which
  runs its arguments (or the items of one comprehension) concurrently;
- a tool returns its text, or the parsed value if the text is a JSON object or array; a
  failed or refused call ends the program with an error naming its line;
- the program's value is its `result` variable if it sets one, else the value of its
  last line if that is an expression; its text follows whatever `print` wrote.
`await` is accepted and changes nothing: a tool call waits for its result anyway.
"""

from __future__ import annotations

import ast
import asyncio
import json
import math
import operator
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

MAX_SOURCE_CHARS = 10_000
MAX_NESTING = 40
"""How deep constructs may nest (a bracket in a call in a loop...): each level is a frame."""
MAX_STEPS = 10_000
"""Statements executed plus loop and comprehension iterations."""
MAX_TOOL_CALLS = 50
MAX_ITEMS = 10_000
"""Items in one list, tuple, dict or range."""
MAX_TEXT_CHARS = 100_000
"""Characters of one text, or of any value written out as text."""
MAX_DIGITS = 100
MAX_WORK = 2_000_000
"""Work in all, in units of about 0.1 µs of CPU: evaluating an expression costs 20, an
item walked by this interpreter 5, an item built, copied or scanned 1, and so do 16
characters. The workflow runs a program without yielding between two tool calls, so this
keeps that stretch to a fraction of a second, far inside the SDK's 2 s deadlock detector."""

ToolCaller = Callable[[str, dict[str, Any]], Awaitable[str]]
"""Calls a tool (name, keyword arguments) and returns its text, or raises ToolFailed."""


class ProgramError(Exception):
    """The program cannot run, or stopped: one line, naming the line of the program."""


class ToolFailed(Exception):
    """Raised by the tool caller: the call failed or was not run; its message says which."""


async def run(source: str, tools: Sequence[str], call_tool: ToolCaller) -> str:
    """Run `source`, which may call `tools` through `call_tool`; return its output text."""
    tree = _parse(source)
    _check(tree, tools)
    program = _Run(tools, call_tool)
    try:
        value = await program.statements(tree.body)
    except _Escaped as escaped:  # The caller's own exception (a cancellation, a bug).
        raise escaped.error from None
    return program.output(value)


# --- Checked before anything runs --------------------------------------------------------

_FUNCTION_NAMES = ("parallel", "print")  # and FUNCTIONS below, and the tools
_ALLOWED = dict.fromkeys(  # a dict, not a set: nothing here depends on hashing order
    (
        *(ast.Module, ast.Expr, ast.Assign, ast.AugAssign, ast.If, ast.For, ast.Break),
        *(ast.Continue, ast.Pass, ast.Constant, ast.Name, ast.List, ast.Tuple, ast.Dict),
        *(ast.BinOp, ast.UnaryOp, ast.BoolOp, ast.Compare, ast.IfExp, ast.Call, ast.Attribute),
        *(ast.Subscript, ast.Slice, ast.JoinedStr, ast.FormattedValue, ast.ListComp),
        *(ast.DictComp, ast.GeneratorExp, ast.Await, ast.comprehension, ast.keyword),
        *(ast.Load, ast.Store, ast.And, ast.Or, ast.Eq, ast.NotEq, ast.Lt, ast.LtE, ast.Gt),
        *(ast.GtE, ast.Is, ast.IsNot, ast.In, ast.NotIn, ast.Add, ast.Sub, ast.Mult, ast.Div),
        *(ast.FloorDiv, ast.Mod, ast.Pow, ast.UAdd, ast.USub, ast.Not),
    )
)
_NO_FUNCTIONS = "defining functions or classes is not supported; write the steps out"
_REFUSED: dict[type[ast.AST], str] = {
    ast.Import: "imports are not allowed: a program calls the agent's tools and built-ins",
    ast.ImportFrom: "imports are not allowed: a program calls the agent's tools and built-ins",
    ast.FunctionDef: _NO_FUNCTIONS,
    ast.AsyncFunctionDef: _NO_FUNCTIONS,
    ast.Lambda: f"{_NO_FUNCTIONS}; to sort by a field, sort (field, item) tuples",
    ast.ClassDef: _NO_FUNCTIONS,
    ast.Return: "return is not supported: assign the answer to `result`",
    ast.While: "while loops are not supported; use for ... in range(n)",
    ast.Try: "try and raise are not supported: a failed tool call ends the program",
    ast.Raise: "try and raise are not supported: a failed tool call ends the program",
    ast.Set: "sets are not supported (their order is not fixed); use a list or a dict",
    ast.SetComp: "sets are not supported (their order is not fixed); use a list or a dict",
    ast.Starred: "* unpacking is not supported; parallel takes one comprehension instead",
    ast.NamedExpr: ":= is not supported; assign on a line of its own",
    ast.BitXor: "^ is not a power here; write 2 ** 10",
    **dict.fromkeys(
        (ast.BitAnd, ast.BitOr, ast.LShift, ast.RShift, ast.Invert, ast.MatMult),
        "only the arithmetic + - * / // % ** is supported",
    ),
}


def _parse(source: str) -> ast.Module:
    if len(source) > MAX_SOURCE_CHARS:
        raise ProgramError(
            f"the program has {len(source)} characters; the limit is {MAX_SOURCE_CHARS}"
        )
    if "\0" in source:
        raise ProgramError("the program contains a null character")
    try:
        return ast.parse(source)
    except SyntaxError as err:
        raise ProgramError(f"line {err.lineno or 1}: syntax error: {err.msg}") from None
    except (MemoryError, RecursionError):  # The parser's own limits.
        raise ProgramError("line 1: the program nests too deeply to parse") from None


def _check(tree: ast.Module, tools: Sequence[str]) -> None:
    """Refuse, with its line, the first construct the interpreter does not run. Iterative:
    a program nested a thousand deep is refused without recursing a thousand deep."""
    # (node, line, depth, inside a loop, is the function of a call)
    stack: list[tuple[ast.AST, int, int, bool, bool]] = [(tree, 1, 0, False, False)]
    while stack:
        node, line, depth, in_loop, callee = stack.pop()
        line = getattr(node, "lineno", line)
        if problem := _problem(node, tools, depth, in_loop, callee):
            raise ProgramError(f"line {line}: {problem}")
        loop = isinstance(node, ast.For) or in_loop
        function = node.func if isinstance(node, ast.Call) else None
        stack.extend(
            (child, line, depth + 1, loop, child is function)
            for child in reversed(list(ast.iter_child_nodes(node)))
        )


def _problem(
    node: Any, tools: Sequence[str], depth: int, in_loop: bool, callee: bool
) -> str | None:
    """What is wrong with `node`, if anything (its children are checked on their own)."""
    kind = type(node)
    if depth > MAX_NESTING:
        return f"the program nests more than {MAX_NESTING} levels deep"
    if kind not in _ALLOWED:
        return _REFUSED.get(kind, f"{kind.__name__} is not supported")
    if kind is ast.Name:
        return _name_problem(node, tools, callee)
    if kind is ast.Call:
        return _call_problem(node, tools)
    if kind is ast.Attribute and (not callee or node.attr not in _METHOD_NAMES):
        return f"no attribute {node.attr} here; the methods allowed are: {_methods_list()}"
    if kind in (ast.Break, ast.Continue) and not in_loop:
        return f"{kind.__name__.lower()} outside a loop"
    if kind in (ast.keyword, ast.Dict) and None in _unpacked(node):
        return "** unpacking is not supported; name each item"
    if kind is ast.comprehension and node.is_async:
        return "async comprehensions are not supported"
    if kind is ast.Constant and not isinstance(node.value, (int, float, str, type(None))):
        return f"{type(node.value).__name__} is not supported"
    return None


def _name_problem(node: ast.Name, tools: Sequence[str], callee: bool) -> str | None:
    if node.id.startswith("_"):
        return f"names starting with _ are not allowed ({node.id})"
    if _is_function(node.id, tools) and isinstance(node.ctx, ast.Store):
        return f"{node.id} is the name of a function; choose another name"
    if _is_function(node.id, tools) and not callee:
        return f"{node.id} is a function, not a value: call it, {node.id}(...)"
    return None


def _call_problem(node: ast.Call, tools: Sequence[str]) -> str | None:
    if isinstance(node.func, ast.Attribute):
        return None
    if not isinstance(node.func, ast.Name):
        return "only tools, built-in functions and methods can be called"
    name = node.func.id
    if not _is_function(name, tools):
        return f"no tool or function named {name} (the tools: {', '.join(tools) or 'none'})"
    if name in tools and node.args:
        return f"tools take keyword arguments only: {name}(name=value, ...)"
    return None


def _is_function(name: str, tools: Sequence[str]) -> bool:
    return name in _FUNCTION_NAMES or name in FUNCTIONS or name in tools


def _unpacked(node: ast.keyword | ast.Dict) -> list[object]:
    return [node.arg] if isinstance(node, ast.keyword) else list(node.keys)


# --- Running ------------------------------------------------------------------------------


class _Limit(ValueError):
    """A limit was reached; its message is for the model as it stands."""


class _Escaped(Exception):
    """Carries the tool caller's own exception past the error handling of the walk."""

    def __init__(self, error: Exception) -> None:
        super().__init__(str(error))
        self.error = error


class _Break(Exception):
    pass


class _Continue(Exception):
    pass


# Python's own errors, as the model would get them from Python; the line is added.
_ERRORS = (ArithmeticError, LookupError, NameError, RuntimeError, TypeError, ValueError)
Scope = dict[str, Any]
"""A comprehension's variables; the program's own are in `_Run.variables`."""


class _Run:
    """One run of one program: its variables, what it printed, and its counters."""

    def __init__(self, tools: Sequence[str], call_tool: ToolCaller) -> None:
        self.tools = tuple(tools)
        self.call_tool = call_tool
        self.variables: dict[str, Any] = {}
        self.printed: list[str] = []
        self.printed_chars = 0
        self.steps = self.work = self.calls = self.completed_calls = 0

    def output(self, value: Any) -> str:
        """The program's text: what it printed, then its value (as JSON unless a text)."""
        value = self.variables.get("result", value)
        if value is not None:
            try:
                self.measure(value)
                self.printed.append(value if isinstance(value, str) else _json(value))
            except _ERRORS as err:
                raise ProgramError(f"the program's value: {self.explain(err)}") from None
        done = _calls(self.completed_calls)
        text = "".join(self.printed).removesuffix("\n")
        return text or f"The program finished ({done}) and returned no value."

    async def statements(self, body: list[ast.stmt]) -> Any:
        """Run statements in order; the value of the last one, if it is an expression."""
        value = None
        for statement in body:
            value = await self.statement(statement)
        return value

    async def statement(self, node: ast.stmt) -> Any:
        try:
            self.step()
            return await getattr(self, f"_{type(node).__name__.lower()}")(node)
        except _ERRORS as err:
            raise ProgramError(f"line {node.lineno}: {self.explain(err)}") from None

    async def evaluate(self, node: ast.expr, scope: Scope) -> Any:
        try:
            self.spend(20)
            return await getattr(self, f"_{type(node).__name__.lower()}")(node, scope)
        except _ERRORS as err:
            raise ProgramError(f"line {node.lineno}: {self.explain(err)}") from None

    def explain(self, err: Exception) -> str:
        text = str(err) if isinstance(err, _Limit) else f"{type(err).__name__}: {err}"
        if self.completed_calls:
            text += f" ({_calls(self.completed_calls)} had completed)"
        return " ".join(text.split())  # One line, whatever the tool or Python said.

    def step(self) -> None:
        self.steps += 1
        if self.steps > MAX_STEPS:
            raise _Limit(f"the program ran more than {MAX_STEPS} steps (statements and loops)")

    def spend(self, units: int) -> None:
        self.work += units
        if self.work > MAX_WORK:
            raise _Limit("the program did too much work (it handles too much data, too often)")

    def measure(self, value: Any) -> int:
        """The size of `value` written out, counted up to the limit: a list that holds one
        list a thousand times counts it a thousand times. The walk costs work."""
        size, visited, stack = 0, 0, [value]
        while stack:
            item = stack.pop()
            visited += 1
            if isinstance(item, str):
                size += len(item) + 2
            elif isinstance(item, dict):
                size += 2 + 4 * len(item)
                stack.extend(item.keys())
                stack.extend(item.values())
            elif isinstance(item, (list, tuple)):
                size += 2 + 2 * len(item)
                stack.extend(item)
            elif isinstance(item, int):
                size += item.bit_length() // 3 + 1
            else:
                size += 24
            if size > MAX_TEXT_CHARS:
                raise _Limit(f"a value of more than {MAX_TEXT_CHARS} characters as text")
        self.spend(5 * visited)
        return size

    def text(self, value: Any) -> str:
        if isinstance(value, str):
            return value
        self.measure(value)
        return str(value)

    # --- statements ---

    async def _expr(self, node: ast.Expr) -> Any:
        return await self.evaluate(node.value, {})

    async def _pass(self, node: ast.Pass) -> None:
        pass

    async def _assign(self, node: ast.Assign) -> None:
        value = await self.evaluate(node.value, {})
        for target in node.targets:
            await self.store(target, value)

    async def _augassign(self, node: ast.AugAssign) -> None:
        target = node.target
        if isinstance(target, ast.Subscript):
            container, key = await self.item_of(target)
            current = container[_key(key) if isinstance(container, dict) else key]
        else:
            current = await self._name(target, {})
        value = await self.evaluate(node.value, {})
        if isinstance(current, list) and isinstance(node.op, ast.Add):
            self.extend(current, value)  # In place, as in Python: the list may be shared.
        elif isinstance(target, ast.Subscript):
            self.set_item(container, key, self.binary(node.op, current, value))
        else:
            self.variables[target.id] = self.binary(node.op, current, value)

    async def _if(self, node: ast.If) -> Any:
        test = await self.evaluate(node.test, {})
        return await self.statements(node.body if test else node.orelse)

    async def _for(self, node: ast.For) -> None:
        for item in _iterable(await self.evaluate(node.iter, {})):
            self.step()
            self.bind(node.target, item, self.variables)
            try:
                await self.statements(node.body)
            except _Break:
                return
            except _Continue:
                continue
        await self.statements(node.orelse)

    async def _break(self, node: ast.Break) -> None:
        raise _Break

    async def _continue(self, node: ast.Continue) -> None:
        raise _Continue

    async def store(self, target: ast.expr, value: Any) -> None:
        if isinstance(target, ast.Subscript):
            self.set_item(*await self.item_of(target), value)
        else:
            self.bind(target, value, self.variables)

    async def item_of(self, target: ast.Subscript) -> tuple[Any, Any]:
        """The container and key of `x[key]` as an assignment's target."""
        if isinstance(target.slice, ast.Slice):
            raise TypeError("assigning to a slice is not supported; build a new list")
        return await self.evaluate(target.value, {}), await self.evaluate(target.slice, {})

    def bind(self, target: ast.expr, value: Any, names: dict[str, Any]) -> None:
        if isinstance(target, ast.Name):
            names[target.id] = value
            return
        if not isinstance(target, (ast.Tuple, ast.List)):
            raise TypeError("only names, x[key] and tuples of names can be assigned to")
        items = list(_iterable(value))
        if len(items) != len(target.elts):
            raise ValueError(f"expected {len(target.elts)} values to unpack, got {len(items)}")
        for element, item in zip(target.elts, items, strict=True):
            self.bind(element, item, names)

    def set_item(self, container: Any, key: Any, value: Any) -> None:
        if isinstance(container, dict):
            if _key(key) not in container:
                _fits(container, extra=1)
            container[key] = value
        elif isinstance(container, list):
            container[key] = value
        else:
            raise TypeError(f"the items of a {_kind(container)} cannot be assigned")

    # --- expressions ---

    async def _constant(self, node: ast.Constant, scope: Scope) -> Any:
        return _fits(node.value)

    async def _name(self, node: ast.Name, scope: Scope) -> Any:
        if node.id in scope:
            return scope[node.id]
        if node.id in self.variables:
            return self.variables[node.id]
        raise NameError(f"name {node.id!r} is not defined")

    async def _list(self, node: ast.List, scope: Scope) -> list[Any]:
        return self.built([await self.evaluate(element, scope) for element in node.elts])

    async def _tuple(self, node: ast.Tuple, scope: Scope) -> tuple[Any, ...]:
        return self.built(tuple([await self.evaluate(element, scope) for element in node.elts]))

    async def _dict(self, node: ast.Dict, scope: Scope) -> dict[Any, Any]:
        made = {}
        for key, value in zip(node.keys, node.values, strict=True):
            made[_key(await self.evaluate(key, scope))] = await self.evaluate(value, scope)
        return self.built(made)

    async def _binop(self, node: ast.BinOp, scope: Scope) -> Any:
        left = await self.evaluate(node.left, scope)
        return self.binary(node.op, left, await self.evaluate(node.right, scope))

    def binary(self, op: ast.operator, left: Any, right: Any) -> Any:
        """`left op right`, refused before it is computed if it would not fit."""
        if isinstance(op, ast.Mult):
            for sequence, times in ((left, right), (right, left)):
                if isinstance(sequence, (str, list, tuple)) and isinstance(times, int):
                    _fits(sequence, extra=len(sequence) * (times - 1))
        if isinstance(op, ast.Pow) and _digits_of_power(left, right) > MAX_DIGITS:
            raise _Limit(f"the power would have more than {MAX_DIGITS} digits")
        if isinstance(op, ast.Mod) and isinstance(left, str):
            raise TypeError("% formatting is not supported; use an f-string")
        return self.built(ARITHMETIC[type(op)](left, right))

    async def _unaryop(self, node: ast.UnaryOp, scope: Scope) -> Any:
        operand = await self.evaluate(node.operand, scope)
        if isinstance(node.op, ast.Not):
            return not operand
        return -operand if isinstance(node.op, ast.USub) else +operand

    async def _boolop(self, node: ast.BoolOp, scope: Scope) -> Any:
        value = None
        for operand in node.values:
            value = await self.evaluate(operand, scope)
            if bool(value) is isinstance(node.op, ast.Or):  # `or` stops at true, `and` at false
                return value
        return value

    async def _compare(self, node: ast.Compare, scope: Scope) -> bool:
        left = await self.evaluate(node.left, scope)
        for op, right_node in zip(node.ops, node.comparators, strict=True):
            right = await self.evaluate(right_node, scope)
            if not self.compared(op, left, right):
                return False
            left = right
        return True

    def compared(self, op: ast.cmpop, left: Any, right: Any) -> bool:
        """`left op right`; comparing containers walks them, and that costs work."""
        if isinstance(op, (ast.In, ast.NotIn)):
            if isinstance(right, dict):
                _key(left)
            elif isinstance(right, (list, tuple)):
                self.spend(len(right) * (self.measure(left) if _is_container(left) else 1))
            else:
                self.spend(_cost(right))
            found = left in right
            return found if isinstance(op, ast.In) else not found
        if _is_container(left) or _is_container(right):
            self.measure(left)
            self.measure(right)
        else:
            self.spend(_cost(left) + _cost(right))
        return _COMPARISONS[type(op)](left, right)

    async def _ifexp(self, node: ast.IfExp, scope: Scope) -> Any:
        chosen = node.body if await self.evaluate(node.test, scope) else node.orelse
        return await self.evaluate(chosen, scope)

    async def _joinedstr(self, node: ast.JoinedStr, scope: Scope) -> str:
        parts = [str(await self.evaluate(part, scope)) for part in node.values]
        return self.built("".join(parts))

    async def _formattedvalue(self, node: ast.FormattedValue, scope: Scope) -> str:
        value = await self.evaluate(node.value, scope)
        if node.conversion in (ord("r"), ord("a")):
            self.measure(value)
            value = repr(value) if node.conversion == ord("r") else ascii(value)
        if not node.format_spec:
            return self.text(value)
        spec = await self.evaluate(node.format_spec, scope)
        if any(len(n) > 2 for n in "".join(c if c.isdigit() else " " for c in spec).split()):
            raise _Limit("format widths and precisions above 99 are not allowed")
        return self.built(format(self.text(value) if node.conversion == ord("s") else value, spec))

    async def _subscript(self, node: ast.Subscript, scope: Scope) -> Any:
        container = await self.evaluate(node.value, scope)
        if isinstance(node.slice, ast.Slice):
            parts = (node.slice.lower, node.slice.upper, node.slice.step)
            bounds = [await self.evaluate(part, scope) if part else None for part in parts]
            return self.built(container[slice(*bounds)])
        key = await self.evaluate(node.slice, scope)
        return container[_key(key) if isinstance(container, dict) else key]

    async def _await(self, node: ast.Await, scope: Scope) -> Any:
        return await self.evaluate(node.value, scope)

    async def _listcomp(self, node: ast.ListComp | ast.GeneratorExp, scope: Scope) -> list[Any]:
        items: list[Any] = []

        async def add(inner: Scope) -> None:
            items.append(await self.evaluate(node.elt, inner))

        await self.iterations(node.generators, scope, add)
        return self.built(items)

    _generatorexp = _listcomp  # Evaluated at once, as a list.

    async def _dictcomp(self, node: ast.DictComp, scope: Scope) -> dict[Any, Any]:
        items: dict[Any, Any] = {}

        async def add(inner: Scope) -> None:
            key = _key(await self.evaluate(node.key, inner))
            items[key] = await self.evaluate(node.value, inner)

        await self.iterations(node.generators, scope, add)
        return self.built(items)

    async def iterations(
        self,
        generators: list[ast.comprehension],
        scope: Scope,
        visit: Callable[[Scope], Awaitable[None]],
    ) -> None:
        """Call `visit` with the variables of each iteration of a comprehension, in order."""
        if not generators:
            await visit(scope)
            return
        first, rest = generators[0], generators[1:]
        for item in _iterable(await self.evaluate(first.iter, scope)):
            self.step()
            inner = dict(scope)
            self.bind(first.target, item, inner)
            for condition in first.ifs:
                if not await self.evaluate(condition, inner):
                    break
            else:
                await self.iterations(rest, inner, visit)

    # --- calls ---

    async def _call(self, node: ast.Call, scope: Scope) -> Any:
        if isinstance(node.func, ast.Name) and node.func.id == "parallel":
            return await self.parallel(node, scope)
        args = [await self.evaluate(arg, scope) for arg in node.args]
        kwargs = {k.arg: await self.evaluate(k.value, scope) for k in node.keywords}
        if isinstance(node.func, ast.Attribute):
            target = await self.evaluate(node.func.value, scope)
            return self.method(node.func.attr, target, args, kwargs)
        name = node.func.id
        if name in self.tools:
            return await self.tool(name, kwargs)
        if name == "print":
            return self.print(args, **kwargs)
        if name in _WALKING:
            self.measure(args)
        if name in _CONSUMING:
            cost = sum(_cost(arg) for arg in args)
            self.spend(cost * cost.bit_length() if name == "sorted" else cost)
        return self.built(FUNCTIONS[name](*args, **kwargs))

    async def tool(self, name: str, arguments: dict[str, Any]) -> Any:
        self.calls += 1
        if self.calls > MAX_TOOL_CALLS:
            raise _Limit(f"the program made more than {MAX_TOOL_CALLS} tool calls")
        self.measure(arguments)
        plain = json.loads(_json(arguments))
        try:
            text = await self.call_tool(name, plain)
        except ToolFailed as failed:
            raise _Limit(str(failed)) from None
        except Exception as err:
            raise _Escaped(err) from err
        self.completed_calls += 1
        return _tool_value(text)

    async def parallel(self, node: ast.Call, scope: Scope) -> list[Any]:
        """`parallel(a, b, ...)` or `parallel([... for ...])`: each argument (or item) is
        evaluated as its own task, so their tool calls run at once, like the calls of one
        model reply; the results come in the order written, and the first failure cancels
        the others still running. The tasks start in the order written and the workflow's
        event loop is deterministic: replay makes the same calls, in the same order."""
        jobs = [(arg, scope) for arg in node.args]
        if len(node.args) == 1 and isinstance(node.args[0], (ast.ListComp, ast.GeneratorExp)):
            each = node.args[0]
            scopes: list[Scope] = []

            async def collect(inner: Scope) -> None:
                scopes.append(inner)

            await self.iterations(each.generators, scope, collect)
            jobs = [(each.elt, inner) for inner in scopes]
        failures: list[Exception] = []
        tasks: list[asyncio.Future[Any]] = []

        async def job(index: int, expression: ast.expr, inner: Scope) -> Any:
            try:
                return await self.evaluate(expression, inner)
            except Exception as err:
                if not failures:
                    failures.append(err)
                    for other, task in enumerate(tasks):
                        if other != index:
                            task.cancel()
                raise

        tasks.extend(asyncio.ensure_future(job(i, *each)) for i, each in enumerate(jobs))
        results = await asyncio.gather(*tasks, return_exceptions=True)
        if failures:
            raise failures[0]
        return self.built(results)

    def print(self, args: list[Any], sep: str = " ", end: str = "\n") -> None:
        line = str(sep).join(self.text(arg) for arg in args) + str(end)
        self.printed_chars += len(line)
        if self.printed_chars > MAX_TEXT_CHARS:
            raise _Limit(f"the program printed more than {MAX_TEXT_CHARS} characters")
        self.printed.append(line)

    def method(self, name: str, target: Any, args: list[Any], kwargs: dict[str, Any]) -> Any:
        """`target.name(...)`, for the few methods allowed; those that could build a huge
        value or walk a big one are checked first."""
        if name not in METHODS.get(type(target), ()):
            raise TypeError(f"a {_kind(target)} has no method {name} here ({_methods_list()})")
        first = args[0] if args else None
        scanned = _cost(target) if isinstance(target, str) else 1  # A text method reads it all.
        self.spend(scanned + sum(_cost(arg) for arg in args))
        if name in ("append", "insert"):
            _fits(target, extra=1)
        elif name == "extend":
            self.extend(target, *args)
            return None
        elif isinstance(target, list) and name in ("index", "count"):
            self.spend(len(target) * self.measure(args))
        elif isinstance(target, dict) and name in ("get", "pop"):
            _key(first)
        elif name == "join":
            items = list(_iterable(first if args else ()))
            self.spend(len(items))
            joined = sum(len(item) for item in items if isinstance(item, str))
            _fits(target, extra=joined + len(target) * max(len(items) - 2, 0))
        elif name == "replace" and len(args) >= 2:
            old, new = str(args[0]), str(args[1])
            _fits(target, extra=max((target.count(old) + 1) * (len(new) - len(old)), 0))
        result = getattr(target, name)(*args, **kwargs)
        return self.built(list(result) if name in ("keys", "values", "items") else result)

    def extend(self, target: list[Any], items: Any = ()) -> None:
        items = list(_iterable(items))
        _fits(target, extra=len(items))
        self.spend(len(items))
        target.extend(items)

    def built(self, value: Any) -> Any:
        """A value just made: within the limits, and its items paid for."""
        _fits(value)
        self.spend(_cost(value))
        return value


def _fits(value: Any, extra: int = 0) -> Any:
    """`value` (grown by `extra` items or characters) is within the limits, or _Limit."""
    if isinstance(value, str) and len(value) + extra > MAX_TEXT_CHARS:
        raise _Limit(f"a text of more than {MAX_TEXT_CHARS} characters")
    if isinstance(value, (list, tuple, dict, range)) and len(value) + extra > MAX_ITEMS:
        raise _Limit(f"a {_kind(value)} of more than {MAX_ITEMS} items")
    if isinstance(value, int) and abs(value) >= _BIGGEST:
        raise _Limit(f"a number of more than {MAX_DIGITS} digits")
    if isinstance(value, complex):
        raise ValueError("the result is not a real number")
    return value


_BIGGEST = 10**MAX_DIGITS


def _digits_of_power(base: Any, exponent: Any) -> float:
    """About how many digits `base ** exponent` has, for integers; estimated, not computed."""
    if not (isinstance(base, int) and isinstance(exponent, int)) or abs(base) <= 1:
        return 0
    return exponent * math.log10(abs(base))


def _key(value: Any) -> Any:
    if value is not None and not isinstance(value, (str, int, float)):
        raise TypeError(f"dict keys are texts, numbers, booleans or None, not {_kind(value)}")
    return value


def _iterable(value: Any) -> Any:
    if isinstance(value, dict):
        return list(value)  # Its keys as they are now: the loop may change the dict.
    if not isinstance(value, (list, tuple, range, str)):
        raise TypeError(f"cannot loop over {_kind(value)}")
    return value


def _cost(value: Any) -> int:
    """The work of one pass over `value` (see MAX_WORK)."""
    if isinstance(value, str):
        return len(value) // 16 + 1
    if isinstance(value, (list, tuple, dict, range)):
        return len(value) + 1
    return 1


def _is_container(value: Any) -> bool:
    return isinstance(value, (list, tuple, dict))


def _calls(count: int) -> str:
    return f"{count} tool call{'s' * (count != 1)}"


def _kind(value: Any) -> str:
    return _KINDS.get(type(value), type(value).__name__)


_KINDS = {str: "text", list: "list", tuple: "tuple", dict: "dict"}


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, default=list)  # tuples, ranges: lists


def _tool_value(text: str) -> Any:
    """What a program gets from a tool: the parsed value of a JSON object or array, else
    the text as it is."""
    _fits(text)
    if text[:1] in ("{", "["):
        try:
            value = json.loads(text)
        except (ValueError, RecursionError):
            return text
        if isinstance(value, (dict, list)):
            return value
    return text


# --- The built-in functions and methods ---------------------------------------------------


def _range(*bounds: int) -> range:
    numbers = range(*bounds)
    try:
        count = len(numbers)
    except OverflowError:
        count = MAX_ITEMS + 1
    if count > MAX_ITEMS:
        raise _Limit(f"a range of more than {MAX_ITEMS} items")
    return numbers


def _round(number: float, ndigits: int | None = None) -> float:
    if ndigits is not None and abs(ndigits) > MAX_DIGITS:
        raise _Limit(f"round to at most {MAX_DIGITS} digits")
    return round(number, ndigits)


def _sum(numbers: Any, start: float = 0) -> float:
    if not isinstance(start, (int, float)):
        raise TypeError("sum adds numbers; join texts with ''.join(...)")
    return sum(_iterable(numbers), start)


def _enumerate(items: Any, start: int = 0) -> list[tuple[int, Any]]:
    return list(enumerate(_iterable(items), start))


def _zip(*sequences: Any) -> list[tuple[Any, ...]]:
    return list(zip(*(_iterable(s) for s in sequences), strict=False))


def _dict(*pairs: Any, **items: Any) -> dict[Any, Any]:
    made = dict(*pairs, **items)
    for key in made:
        _key(key)
    return made


FUNCTIONS: dict[str, Callable[..., Any]] = {
    "abs": abs,
    "all": all,
    "any": any,
    "bool": bool,
    "dict": _dict,
    "enumerate": _enumerate,
    "float": float,
    "int": int,
    "len": len,
    "list": list,
    "max": max,
    "min": min,
    "range": _range,
    "round": _round,
    "sorted": sorted,
    "str": str,
    "sum": _sum,
    "zip": _zip,
}
"""The built-in functions a program may call, besides `print` and `parallel`."""
for _name, _function in FUNCTIONS.items():
    # So that a wrong call reads as Python would say it: "round() takes ...".
    if _function.__module__ == __name__:
        _function.__qualname__ = _function.__name__ = _name
del _name, _function
_WALKING = ("max", "min", "sorted", "str")
"""Functions that walk their arguments deep (comparing, writing out): measured first."""
_CONSUMING = ("all", "any", "dict", "enumerate", "float", "int", "list", "max", "min")
_CONSUMING += ("sorted", "sum", "zip")
"""Functions that go through their arguments once (sorted: n log n times)."""

METHODS: dict[type, tuple[str, ...]] = {
    str: (
        *("count", "endswith", "find", "join", "lower", "lstrip", "replace", "rstrip"),
        *("split", "splitlines", "startswith", "strip", "title", "upper"),
    ),
    list: ("append", "count", "extend", "index", "insert", "pop"),
    dict: ("get", "items", "keys", "pop", "values"),
}
"""The only attributes a program may touch: these methods, called."""
_METHOD_NAMES = tuple(name for names in METHODS.values() for name in names)


def _methods_list() -> str:
    return "; ".join(f"{_KINDS[kind]}: {', '.join(names)}" for kind, names in METHODS.items())


# The calculator tool (tools.py) computes with the same table.
ARITHMETIC: dict[type[ast.operator], Callable[[Any, Any], Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_COMPARISONS: dict[type[ast.cmpop], Callable[[Any, Any], bool]] = {
    ast.Eq: operator.eq,
    ast.NotEq: operator.ne,
    ast.Lt: operator.lt,
    ast.LtE: operator.le,
    ast.Gt: operator.gt,
    ast.GtE: operator.ge,
    ast.Is: operator.is_,
    ast.IsNot: operator.is_not,
}


DESCRIPTION = (
    "Run a short program, in a small subset of Python, that calls your other tools as "
    'functions with keyword arguments, e.g. weather(city="Oslo"): one program instead of a '
    "reply per call when a task needs several. It has numbers, texts, lists, tuples, dicts, "
    "assignment, if/elif/else, for loops (break, continue), comprehensions, f-strings, "
    f"indexing and slicing, the functions {', '.join(FUNCTIONS)} and print, and the methods "
    f"{_methods_list()}. parallel(a(...), b(...)) or parallel([a(x=v) for v in values]) "
    "runs tool calls at once and returns their results as a list. A tool returns its text, "
    "or the parsed value if that text is a JSON object or array. The program's result is "
    "its variable `result` if set, else its last line's value, after anything printed. "
    "sorted, min and max take no key: sort (key, item) tuples instead. "
    "Not allowed: imports, def, lambda, class, while, try, sets, other attributes, names "
    f"starting with _. Limits: {MAX_SOURCE_CHARS} characters, {MAX_STEPS} steps, "
    f"{MAX_TOOL_CALLS} tool calls. An error or a failed tool call stops the program with a "
    "message naming the line."
)
"""What the model reads about `run_program`, in the tool's schema."""
