"""A tiny, safe expression language for search-space bounds and constraints."""

from __future__ import annotations

import ast
import operator
from collections.abc import Mapping
from typing import Any

from autotune.errors import ConfigError

_BINOPS = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_CMPOPS = {
    ast.Lt: operator.lt,
    ast.LtE: operator.le,
    ast.Gt: operator.gt,
    ast.GtE: operator.ge,
    ast.Eq: operator.eq,
    ast.NotEq: operator.ne,
}
_FUNCS = {"min": min, "max": max, "abs": abs, "int": int}


def parse(expr: str, where: str) -> ast.Expression:
    """Parse once, refusing anything but arithmetic, comparisons, and/or/not, names and min/max/abs/int."""
    try:
        tree = ast.parse(str(expr), mode="eval")
    except SyntaxError as exc:
        raise ConfigError(f"{where}: cannot parse expression {expr!r} ({exc.msg})") from None
    for node in ast.walk(tree):
        ok = isinstance(
            node,
            ast.Expression
            | ast.BinOp
            | ast.UnaryOp
            | ast.BoolOp
            | ast.Compare
            | ast.Name
            | ast.Constant
            | ast.Load
            | ast.Call
            | ast.operator
            | ast.unaryop
            | ast.boolop
            | ast.cmpop,
        )
        if isinstance(node, ast.Call) and not (isinstance(node.func, ast.Name) and node.func.id in _FUNCS):
            ok = False
        if isinstance(node, ast.Constant) and not isinstance(node.value, int | float | bool | str):
            ok = False
        if not ok:
            raise ConfigError(f"{where}: expression {expr!r} uses {type(node).__name__}, which is not allowed")
    return tree


def names(tree: ast.Expression) -> set[str]:
    """Variable names an expression refers to (functions excluded)."""
    funcs = {n.func.id for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)}
    return {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)} - funcs


def evaluate(tree: ast.Expression, env: Mapping[str, Any], where: str) -> Any:
    """Evaluate a parsed expression over ``env``; unknown names are one-line errors."""

    def ev(node: ast.AST) -> Any:
        if isinstance(node, ast.Expression):
            return ev(node.body)
        if isinstance(node, ast.Constant):
            return node.value
        if isinstance(node, ast.Name):
            if node.id in ("true", "True"):
                return True
            if node.id in ("false", "False"):
                return False
            if node.id not in env:
                raise ConfigError(f"{where}: unknown name {node.id!r} (known: {', '.join(sorted(env))})")
            return env[node.id]
        if isinstance(node, ast.BinOp):
            return _BINOPS[type(node.op)](ev(node.left), ev(node.right))
        if isinstance(node, ast.UnaryOp):
            val = ev(node.operand)
            return (not val) if isinstance(node.op, ast.Not) else (-val if isinstance(node.op, ast.USub) else +val)
        if isinstance(node, ast.BoolOp):
            vals = [ev(v) for v in node.values]
            return all(vals) if isinstance(node.op, ast.And) else any(vals)
        if isinstance(node, ast.Compare):
            left = ev(node.left)
            for op, comp in zip(node.ops, node.comparators, strict=True):
                right = ev(comp)
                if not _CMPOPS[type(op)](left, right):
                    return False
                left = right
            return True
        if isinstance(node, ast.Call):
            return _FUNCS[node.func.id](*[ev(a) for a in node.args])  # type: ignore[attr-defined]
        raise ConfigError(f"{where}: unsupported expression")  # pragma: no cover - parse() refuses these

    return ev(tree)
