"""The interpreter of `run_program` on its own, with fake tools: what a program computes,
what it is refused, and how its tool calls are made. No server: the workflow's part is in
test_programs.py."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest

import program
from program import MAX_SOURCE_CHARS, MAX_TOOL_CALLS, ProgramError, ToolFailed

TOOLS = ["weather", "lookup", "save_note", "slow"]


class FakeTools:
    """The tools a program calls, recording each call (name, arguments) in order.

    `weather` answers in text, `lookup` in JSON; `save_note` fails when the text is
    "fail" and is refused when it is "deny"; `slow` waits `seconds` first.
    """

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.running = 0
        self.most_at_once = 0
        self.cancelled: list[dict[str, Any]] = []

    async def __call__(self, name: str, arguments: dict[str, Any]) -> str:
        self.calls.append((name, arguments))
        self.running += 1
        self.most_at_once = max(self.most_at_once, self.running)
        try:
            await asyncio.sleep(arguments.get("seconds", 0.01))
        except asyncio.CancelledError:
            self.cancelled.append(arguments)
            raise
        finally:
            self.running -= 1
        if name == "lookup":
            return json.dumps({"city": arguments["city"], "temp": len(arguments["city"])})
        if name == "save_note" and arguments["text"] == "fail":
            raise ToolFailed("save_note failed: the disk is full")
        if name == "save_note" and arguments["text"] == "deny":
            raise ToolFailed("save_note was not run: the user denied it (not now)")
        return f"{name}: {arguments}"


async def run(source: str, tools: FakeTools | None = None) -> str:
    return await program.run(source, TOOLS, tools or FakeTools())


@pytest.mark.parametrize(
    ("source", "output"),
    [
        ("1 + 2 * 3", "7"),
        ("2 ** 10 - 7 // 2 + 7 % 4", "1024"),
        ("x = 7 / 2\nx", "3.5"),
        ("a, (b, c) = 1, [2, 3]\na + b * c", "7"),
        ('name = "Oslo"\nf"{name}: {21.456:.1f}°C, {[1, 2]!r}"', "Oslo: 21.5°C, [1, 2]"),
        ('"  Oslo, Rome ".strip().lower().split(", ")', '["oslo", "rome"]'),
        (
            "xs = [5, 3, 8]\nxs.append(1)\n[xs[0], xs[-1], xs[1:3], sorted(xs)]",
            "[5, 1, [3, 8], [1, 3, 5, 8]]",
        ),
        (
            'd = {"a": 1}\nd["b"] = 2\nd["a"] += 10\n[d, d.get("c", 0), list(d.items())]',
            '[{"a": 11, "b": 2}, 0, [["a", 11], ["b", 2]]]',
        ),
        (
            "total = 0\nfor i in range(10):\n    if i % 2:\n        continue\n    if i > 6:\n"
            "        break\n    total += i\ntotal",
            "12",
        ),
        ("for i in range(3):\n    pass\nelse:\n    i = 'done'\ni", "done"),
        ("[x * x for x in range(5) if x != 2]", "[0, 1, 9, 16]"),
        ("{c: len(c) for c in ['Oslo', 'Rome']}", '{"Oslo": 4, "Rome": 4}'),
        ("[(i, c) for i, c in enumerate('ab', 1)]", '[[1, "a"], [2, "b"]]'),
        ("sum(x for x in [1, 2, 3]) + max(4, 9) + min([3, 2]) + len('abc') + abs(-1)", "21"),
        (
            "[round(2.567, 2), int('42'), float('1.5'), str(3), bool(0), any([0, 1]), all([])]",
            '[2.57, 42, 1.5, "3", false, true, true]',
        ),
        ("list(zip(['a', 'b'], [1, 2]))", '[["a", 1], ["b", 2]]'),
        ("3 if 1 < 2 <= 2 and not None else 4", "3"),
        ("None or [] or 'last'", "last"),
        ("'x' in {'x': 1} and 2 in [1, 2] and 'b' in 'abc' and 5 not in range(3)", "true"),
        ("result = 'the result wins'\n'not the last line'", "the result wins"),
        (
            "print('a', 1, [2])\nprint('b', 'c', sep='-', end='!')\n{'k': None}",
            'a 1 [2]\nb-c!{"k": null}',
        ),
        ("x = 1", "The program finished (0 tool calls) and returned no value."),
    ],
)
async def test_a_program_computes_what_python_would(source: str, output: str):
    assert await run(source) == output


async def test_tools_are_called_by_name_with_keyword_arguments_and_answer_in_text_or_json():
    tools = FakeTools()
    source = (
        "report = []\n"
        'for city in ["Oslo", "Rome"]:\n'
        "    report.append(weather(city=city))\n"
        'found = lookup(city="Lima")\n'
        "report.append(f\"{found['city']} is {found['temp']}\")\n"
        '"; ".join(report)'
    )

    output = await run(source, tools)

    assert output == "weather: {'city': 'Oslo'}; weather: {'city': 'Rome'}; Lima is 4"
    assert tools.calls == [
        ("weather", {"city": "Oslo"}),
        ("weather", {"city": "Rome"}),
        ("lookup", {"city": "Lima"}),
    ]


async def test_a_tool_gets_plain_json_arguments():
    tools = FakeTools()

    await run("weather(days=range(2), pair=(1, 'a'), nested={'k': [None]})", tools)

    assert tools.calls == [("weather", {"days": [0, 1], "pair": [1, "a"], "nested": {"k": [None]}})]


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("fail", "line 2: save_note failed: the disk is full (1 tool call had completed)"),
        (
            "deny",
            "line 2: save_note was not run: the user denied it (not now) (1 tool call had "
            "completed)",
        ),
    ],
)
async def test_a_failed_or_refused_tool_call_ends_the_program_naming_its_line(
    text: str, error: str
):
    tools = FakeTools()

    with pytest.raises(ProgramError) as stopped:
        await run(f'weather(city="Oslo")\nsave_note(text="{text}")\nweather(city="Rome")', tools)
    assert str(stopped.value) == error
    assert [name for name, _ in tools.calls] == ["weather", "save_note"]  # Rome: never asked


async def test_an_exception_of_the_tool_caller_itself_is_raised_as_it_is():
    async def broken(name: str, arguments: dict[str, Any]) -> str:
        raise KeyError("a bug in the workflow, not in the program")

    with pytest.raises(KeyError, match="a bug in the workflow"):
        await program.run('weather(city="Oslo")', TOOLS, broken)


async def test_parallel_calls_run_at_once_and_come_back_in_the_order_written():
    tools = FakeTools()
    source = (
        'first = parallel(slow(seconds=0.2, n=1), slow(seconds=0.1, n=2), weather(city="Oslo"))\n'
        'rest = parallel([lookup(city=c) for c in ["Lima", "Rome", "Bern"] if c != "Rome"])\n'
        "[first, rest]"
    )

    started = time.perf_counter()
    output = json.loads(await run(source, tools))

    assert time.perf_counter() - started < 0.3 + 0.1  # 0.2 s, then 0.01 s: not 0.33 s in a row
    assert tools.most_at_once == 3
    assert output == [
        [
            "slow: {'seconds': 0.2, 'n': 1}",
            "slow: {'seconds': 0.1, 'n': 2}",
            "weather: {'city': 'Oslo'}",
        ],
        [{"city": "Lima", "temp": 4}, {"city": "Bern", "temp": 4}],
    ]


async def test_the_first_failure_in_parallel_cancels_the_calls_still_running():
    tools = FakeTools()
    source = 'parallel(slow(seconds=5, n=1), save_note(text="fail"), slow(seconds=5, n=2))'

    started = time.perf_counter()
    with pytest.raises(ProgramError, match="line 1: save_note failed: the disk is full"):
        await run(source, tools)

    assert time.perf_counter() - started < 1  # not the 5 s of the slow calls
    assert tools.cancelled == [{"seconds": 5, "n": 1}, {"seconds": 5, "n": 2}]


async def test_the_same_program_with_the_same_results_makes_the_same_calls_in_the_same_order():
    source = (
        "found = parallel([lookup(city=c) for c in ['Oslo', 'Lima', 'Bern']])\n"
        "for row in sorted([(r['temp'], r['city']) for r in found], reverse=True)[:2]:\n"
        "    parallel(weather(city=row[1]), slow(seconds=0.02 * row[0], city=row[1]))\n"
        "save_note(text=str(found))"
    )
    runs = [FakeTools(), FakeTools()]

    outputs = [await run(source, tools) for tools in runs]

    assert outputs[0] == outputs[1]
    assert runs[0].calls == runs[1].calls
    assert [name for name, _ in runs[0].calls] == [
        *["lookup"] * 3,
        *["weather", "slow"] * 2,
        "save_note",
    ]


# --- Refused, quickly, with a message the model can act on -----------------------------------

HOSTILE = {
    "a huge power": ("2 ** 10 ** 10", "line 1: the power would have more than 100 digits"),
    "a huge power, step by step": (
        "x = 10 ** 50\nx = x * x * x",
        "line 2: a number of more than 100 digits",
    ),
    "a huge float power": ("2.0 ** 10000", "line 1: OverflowError"),
    "a billion-item list": ("[0] * 10 ** 9", "line 1: a list of more than 10000 items"),
    "a huge text by *": ("'ab' * 10 ** 9", "line 1: a text of more than 100000 characters"),
    "a huge text by join": (
        "s = 'x' * 100000\n'-'.join([s] * 100)",
        "line 2: a text of more than 100000 characters",
    ),
    "a huge text by replace": (
        "('a' * 1000).replace('a', 'b' * 1000)",
        "line 1: a text of more than 100000 characters",
    ),
    "a huge format width": ("f'{1:>1000000000}'", "line 1: format widths and precisions above 99"),
    "a huge range": ("sum(range(10 ** 12))", "line 1: a range of more than 10000 items"),
    "a huge rounding": ("round(5, -10 ** 9)", "line 1: round to at most 100 digits"),
    "nested lists written out": (
        "a = [1]\nb = [a] * 100\nc = [b] * 100\nd = [c] * 100\na.extend(range(5000))\nstr(d)",
        "line 6: a value of more than 100000 characters as text",
    ),
    "nested lists compared": (
        "a = [[[0] * 100] * 100] * 100\nb = [[[0] * 100] * 100] * 100\na == b",
        "line 3: a value of more than 100000 characters as text",
    ),
    "deep nesting in comprehensions": (
        "[" * 45 + "x" + " for x in range(2)]" * 45,
        "line 1: the program nests more than 40 levels deep",
    ),
    "comprehensions multiplying": (
        "[[[x for x in range(100)] for y in range(100)] for z in range(100)]",
        "line 1: the program ran more than 10000 steps",
    ),
    "deep nesting of brackets": ("(" * 300 + "1" + ")" * 300, "line 1: syntax error: too many"),
    "deep nesting of operators": ("-" * 9000 + "1", "line 1: the program nests too deeply"),
    "a long chain of operators": ("+".join(["1"] * 100), "line 1: the program nests more than 40"),
    "a list nested in itself": (
        "x = []\nfor i in range(3000):\n    x = [x]\nstr(x)",
        "line 4: RecursionError",
    ),
    "a huge text, copied again and again": (
        "s = 'x' * 99999\nfor i in range(4999):\n    t = s + 'y'",
        "line 3: the program did too much work",
    ),
    "a big list, sorted again and again": (
        "xs = list(range(10000))\nfor i in range(4999):\n    ys = sorted(xs)",
        "line 3: the program did too much work",
    ),
    "printing without end": (
        "for i in range(4000):\n    print('x' * 99)",
        "line 2: the program printed more than 100000 characters",
    ),
    "an infinite loop over a growing list": (
        "xs = [1]\nfor x in xs:\n    xs.append(x)",
        "line 2: the program ran more than 10000 steps",
    ),
    "a while loop": ("while True:\n    pass", "line 1: while loops are not supported"),
    "10 000 tool calls": (
        "for i in range(10000):\n    weather(city=str(i))",
        f"line 2: the program made more than {MAX_TOOL_CALLS} tool calls",
    ),
    "a 1 MB program": (
        "x = 1\n" * 170_000,
        f"the program has 1020000 characters; the limit is {MAX_SOURCE_CHARS}",
    ),
    "().__class__": ("().__class__", "line 1: no attribute __class__ here"),
    "a method's __self__": ("''.join.__self__", "line 1: no attribute __self__ here"),
    "an attribute in an f-string": ("x = 1\nf'{x.__class__}'", "line 2: no attribute __class__"),
    "format's attribute fields": ("'{0.__class__}'.format(1)", "line 1: no attribute format here"),
    "a method on the wrong type": ("[].upper()", "line 1: TypeError: a list has no method upper"),
    "__import__": ("__import__('os')", "line 1: no tool or function named __import__"),
    "an underscore name": (
        "_secret = 1",
        "line 1: names starting with _ are not allowed (_secret)",
    ),
    "import": ("import os", "line 1: imports are not allowed"),
    "from import": ("from os import path", "line 1: imports are not allowed"),
    "eval": ("eval('1')", "line 1: no tool or function named eval"),
    "open": ("open('/etc/passwd')", "line 1: no tool or function named open"),
    "getattr": ("getattr(1, 'real')", "line 1: no tool or function named getattr"),
    "type": ("type(1)", "line 1: no tool or function named type"),
    "a function as a value": ("f = len\nf([])", "line 1: len is a function, not a value"),
    "a tool as a value": ("w = weather", "line 1: weather is a function, not a value"),
    "shadowing a function": ("sorted = [1]", "line 1: sorted is the name of a function"),
    "a lambda": ("sorted([1], key=lambda x: x)", "line 1: defining functions or classes"),
    "a def": ("def f():\n    pass", "line 1: defining functions or classes"),
    "a class": ("class A:\n    pass", "line 1: defining functions or classes"),
    "a set": ("{1, 2}", "line 1: sets are not supported"),
    "try": ("try:\n    x = 1\nexcept Exception:\n    pass", "line 1: try and raise"),
    "with": ("with x:\n    pass", "line 1: With is not supported"),
    "return": ("return 1", "line 1: return is not supported: assign the answer to `result`"),
    "a walrus": ("(x := 1)", "line 1: := is not supported"),
    "star unpacking": ("parallel(*[weather(city=c) for c in 'ab'])", "line 1: * unpacking"),
    "** unpacking": ("weather(**{'city': 'x'})", "line 1: ** unpacking is not supported"),
    "bytes": ("b'x'", "line 1: bytes is not supported"),
    "a bit shift": ("1 << 10 ** 9", "line 1: only the arithmetic + - * / // % ** is supported"),
    "^ as a power": ("2 ^ 10", "line 1: ^ is not a power here; write 2 ** 10"),
    "% formatting": ("'%s' % 1", "line 1: TypeError: % formatting is not supported"),
    "a positional tool argument": ("weather('Oslo')", "line 1: tools take keyword arguments only"),
    "an unknown tool": (
        "weathr(city='x')",
        "line 1: no tool or function named weathr (the tools: ",
    ),
    "a tuple as a dict key": ("{(1, 2): 3}", "line 1: TypeError: dict keys are texts, numbers"),
    "break outside a loop": ("x = 1\nbreak", "line 2: break outside a loop"),
    "an undefined name": ("x = 1\ny + 1", "line 2: NameError: name 'y' is not defined"),
    "a division by zero": ("1 / 0", "line 1: ZeroDivisionError: division by zero"),
    "a syntax error": (
        "x = 1\nfor i in range(3)\n    x += i",
        "line 2: syntax error: expected ':'",
    ),
    "a null byte": ("x = 1\0", "the program contains a null character"),
}


@pytest.mark.parametrize(("source", "error"), HOSTILE.values(), ids=HOSTILE.keys())
async def test_a_hostile_or_broken_program_is_refused_quickly_with_a_clear_one_line_error(
    source: str, error: str
):
    tools = FakeTools()

    started = time.perf_counter()
    with pytest.raises(ProgramError) as refused:
        await program.run(source, TOOLS, instant(tools))

    assert time.perf_counter() - started < 0.5
    assert str(refused.value).startswith(error), str(refused.value)
    assert "\n" not in str(refused.value)
    assert len(tools.calls) <= MAX_TOOL_CALLS


def instant(tools: FakeTools) -> program.ToolCaller:
    """The fake tools, answering at once: 10 000 calls must cost nothing but the refusal."""

    async def call(name: str, arguments: dict[str, Any]) -> str:
        tools.calls.append((name, arguments))
        return "ok"

    return call


async def test_a_program_that_runs_long_is_stopped_at_the_step_limit():
    with pytest.raises(ProgramError, match="line 2: the program ran more than 10000 steps"):
        await run("n = 0\nfor i in range(10000):\n    n += 1")
    assert await run("n = 0\nfor i in range(4000):\n    n += 1\nn") == "4000"
