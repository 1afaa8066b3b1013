"""A tiny, safe expression language for search-space bounds and constraints.

Expressions are Python syntax restricted to numbers (int, float, bool), names, arithmetic
(``+ - * / // % **``), comparisons, ``and``/``or``/``not`` and ``min``/``max``/``abs``/``int``. They come
from user-written YAML files, so every operation is bounded: no strings (``'x' * 10**10``), small exponents
(``9**9**9``), magnitudes and float results checked after every step, and every failure is one
:class:`ConfigError` line naming the file and key (the ``where`` the caller passes).
"""

from __future__ import annotations

import ast
import math
import operator
from collections.abc import Callable, Mapping
from typing import Any

from autotune.errors import ConfigError

Number = int | float  # bool is an int subclass, so it is a Number too

# Far beyond any machine fact or engine setting, yet small enough that no operation on two such numbers
# (the largest being a 64th power) takes measurable time or memory.
MAX_MAGNITUDE = 10**18
MAX_EXPONENT = 64
# Spaces' expressions are one-liners; the limits keep the parser and the evaluator's recursion shallow.
MAX_LENGTH = 500
MAX_DEPTH = 32

_BINOPS: dict[type[ast.operator], Callable[[Any, Any], Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_CMPOPS: dict[type[ast.cmpop], Callable[[Any, Any], bool]] = {
    ast.Lt: operator.lt,
    ast.LtE: operator.le,
    ast.Gt: operator.gt,
    ast.GtE: operator.ge,
    ast.Eq: operator.eq,
    ast.NotEq: operator.ne,
}
_UNARYOPS: dict[type[ast.unaryop], Callable[[Any], Any]] = {
    ast.UAdd: operator.pos,
    ast.USub: operator.neg,
    ast.Not: operator.not_,
}
# name -> (function, fewest arguments, most arguments or None for any number)
_FUNCS: dict[str, tuple[Callable[..., Any], int, int | None]] = {
    "min": (min, 2, None),
    "max": (max, 2, None),
    "abs": (abs, 1, 1),
    "int": (int, 1, 1),
}
_CONSTANT_NAMES = {"true": True, "True": True, "false": False, "False": False}
_STRUCTURE = (ast.Expression, ast.BinOp, ast.UnaryOp, ast.BoolOp, ast.Compare, ast.Name, ast.Constant, ast.Load)
_ALLOWED_OPS = (*_BINOPS, *_CMPOPS, *_UNARYOPS, ast.And, ast.Or)
# Every Python operator as written, so messages point at the culprit; those not above are refused.
_SYMBOLS: dict[type[ast.AST], str] = {
    ast.Add: "+",
    ast.Sub: "-",
    ast.Mult: "*",
    ast.Div: "/",
    ast.FloorDiv: "//",
    ast.Mod: "%",
    ast.Pow: "**",
    ast.UAdd: "+",
    ast.USub: "-",
    ast.Not: "not",
    ast.LShift: "<<",
    ast.RShift: ">>",
    ast.BitAnd: "&",
    ast.BitOr: "|",
    ast.BitXor: "^",
    ast.MatMult: "@",
    ast.Invert: "~",
    ast.In: "in",
    ast.NotIn: "not in",
    ast.Is: "is",
    ast.IsNot: "is not",
}
_SUPPORTED = "numbers, names, + - * / // % **, comparisons, and/or/not, min/max/abs/int"


def _short(value: object) -> str:
    """A value's repr cut to a length that keeps any message readable on one line."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def check_number(value: object, what: str, where: str) -> Number:
    """``value`` if it is a finite int, float or bool of magnitude at most 1e18, else a one-line ConfigError."""
    if not isinstance(value, int | float):
        raise ConfigError(f"{where}: {what} is {_short(value)}, not a number (expressions use numbers only)")
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{where}: {what} is {value}, not a finite number")
    if abs(value) > MAX_MAGNITUDE:
        raise ConfigError(f"{where}: {what} is out of range (magnitude above 1e18)")
    return value


def parse(expr: str, where: str) -> ast.Expression:
    """Parse once, refusing anything but numbers, names, arithmetic, comparisons, and/or/not and min/max/abs/int."""
    text = str(expr)
    if len(text) > MAX_LENGTH:
        raise ConfigError(f"{where}: expression is {len(text)} characters long (at most {MAX_LENGTH})")
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError as exc:
        raise ConfigError(f"{where}: cannot parse expression {_short(text)} ({exc.msg})") from None
    except (RecursionError, MemoryError):
        # CPython's parser gives up on pathological nesting with these rather than a SyntaxError.
        raise ConfigError(f"{where}: cannot parse expression {_short(text)} (too deeply nested)") from None
    except ValueError:  # a NUL character, on some Python versions
        raise ConfigError(f"{where}: cannot parse expression {_short(text)} (invalid characters)") from None
    stack: list[tuple[ast.AST, int]] = [(tree, 0)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise ConfigError(f"{where}: expression {_short(text)} nests more than {MAX_DEPTH} levels deep")
        _check_node(node, text, where)
        stack.extend((child, depth + 1) for child in ast.iter_child_nodes(node))
    return tree


def _check_node(node: ast.AST, text: str, where: str) -> None:
    """Refuse one syntax node the language does not have (one line naming the construct)."""
    if isinstance(node, _ALLOWED_OPS):
        return
    if type(node) in _SYMBOLS:
        raise ConfigError(
            f"{where}: expression {_short(text)} uses {_SYMBOLS[type(node)]!r}, which is not allowed "
            f"(supported: {_SUPPORTED})"
        )
    if isinstance(node, ast.Constant):
        if isinstance(node.value, str):
            raise ConfigError(f"{where}: expression {_short(text)} uses a string, which is not allowed (numbers only)")
        if not isinstance(node.value, int | float):
            raise ConfigError(f"{where}: expression {_short(text)} uses {_short(node.value)}, which is not allowed")
        check_number(node.value, "a constant", f"{where}: expression {_short(text)}")
        return
    if isinstance(node, ast.Call):
        func = node.func.id if isinstance(node.func, ast.Name) else None
        if func not in _FUNCS or node.keywords:
            raise ConfigError(f"{where}: expression {_short(text)} uses Call, which is not allowed")
        _, fewest, most = _FUNCS[func]
        if len(node.args) < fewest or (most is not None and len(node.args) > most):
            count = str(fewest) if most == fewest else f"at least {fewest}"
            raise ConfigError(f"{where}: {func}() in {_short(text)} takes {count} argument(s), got {len(node.args)}")
        return
    if not isinstance(node, _STRUCTURE):
        raise ConfigError(f"{where}: expression {_short(text)} uses {type(node).__name__}, which is not allowed")


def names(tree: ast.Expression) -> set[str]:
    """Variable names an expression refers to (functions excluded)."""
    funcs = {n.func.id for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)}
    return {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)} - funcs


def evaluate(tree: ast.Expression, env: Mapping[str, Any], where: str) -> Number:
    """Evaluate a parsed expression over ``env``; every failure (unknown name, division by zero...) is one line."""
    # Messages quote the expression as parsed (one line even when the YAML string spanned several).
    at = f"{where}: expression {_short(ast.unparse(tree))}"

    def arith(what: str, fn: Callable[..., Any], *args: Number) -> Number:
        """Apply one operation, turning Python's arithmetic exceptions into one-line errors."""
        try:
            result = fn(*args)
        except ZeroDivisionError:
            raise ConfigError(f"{at}: division by zero") from None
        except (ArithmeticError, ValueError) as exc:  # float overflow, int() of a huge float...
            raise ConfigError(f"{at}: {what} fails ({type(exc).__name__})") from None
        if isinstance(result, complex):  # a negative number to a fractional power
            raise ConfigError(f"{at}: {what} has no real value")
        return check_number(result, f"the result of {what}", at)

    def ev(node: ast.AST) -> Number:
        """Value of one node; operands are checked numbers, so each operation stays small."""
        if isinstance(node, ast.Expression):
            return ev(node.body)
        if isinstance(node, ast.Constant):
            return check_number(node.value, "a constant", at)
        if isinstance(node, ast.Name):
            if node.id in _CONSTANT_NAMES:
                return _CONSTANT_NAMES[node.id]
            if node.id not in env:
                raise ConfigError(f"{at}: unknown name {node.id!r} (known: {', '.join(sorted(env))})")
            return check_number(env[node.id], repr(node.id), at)
        if isinstance(node, ast.BinOp):
            left, right = ev(node.left), ev(node.right)
            if isinstance(node.op, ast.Pow) and abs(right) > MAX_EXPONENT:
                raise ConfigError(f"{at}: exponent {_short(right)} is too large (at most {MAX_EXPONENT})")
            if isinstance(node.op, ast.Div | ast.FloorDiv | ast.Mod) and right == 0:
                raise ConfigError(f"{at}: division by zero")
            return arith(repr(_SYMBOLS[type(node.op)]), _BINOPS[type(node.op)], left, right)
        if isinstance(node, ast.UnaryOp):
            return arith(repr(_SYMBOLS[type(node.op)]), _UNARYOPS[type(node.op)], ev(node.operand))
        if isinstance(node, ast.BoolOp):
            # Short-circuit like Python, so `gpus == 0 or memory_gb / gpus > 8` never divides by zero.
            value = ev(node.values[0])
            for operand in node.values[1:]:
                if bool(value) == isinstance(node.op, ast.Or):
                    break
                value = ev(operand)
            return value
        if isinstance(node, ast.Compare):
            left = ev(node.left)
            for op, comp in zip(node.ops, node.comparators, strict=True):
                right = ev(comp)
                if not _CMPOPS[type(op)](left, right):
                    return False
                left = right
            return True
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in _FUNCS:
            return arith(f"{node.func.id}()", _FUNCS[node.func.id][0], *(ev(a) for a in node.args))
        # parse() refuses everything else; a hand-built tree still gets a one-line answer.
        raise ConfigError(f"{at}: {type(node).__name__} is not supported")

    return ev(tree)
