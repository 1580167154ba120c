"""Hypothesis strategies shared by the fuzz tests: JSON and YAML documents as *text*, so that a case can hold
what a Python value cannot (a key given twice, ``NaN``, an integer of 5,000 digits, 100,000 nested brackets,
a lone surrogate), and mutations of a valid document, which reach deeper into a parser than noise does.

A document is a tree: ``None``/``bool``/``int``/``float``/``str`` scalars, ``list``, :class:`Obj` (an
ordered list of key/value pairs: keys may repeat) and :class:`Raw` (text inserted verbatim). ``render``
writes it as JSON or as flow-style YAML.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any, Literal

from hypothesis import strategies as st

Style = Literal["json", "yaml"]


@dataclass(frozen=True)
class Raw:
    """Text written as it is (a token JSON or YAML may or may not accept)."""

    text: str


@dataclass(frozen=True)
class Obj:
    """A mapping as written: pairs in order, a key possibly given twice."""

    pairs: tuple[tuple[Any, Any], ...]


DEEP = 100_000
"""Nesting depth of the "deep" tokens: past any recursive parser's stack, far below the size limits."""
BIG_DIGITS = 5_000
"""Digits of the "huge integer" tokens: past Python's 4,300-digit int/str conversion limit."""

JSON_TOKENS = ("NaN", "Infinity", "-Infinity", "1e400", "-1e400", "1e-400", "9" * 400, "1" * BIG_DIGITS,
               "-" + "9" * BIG_DIGITS, "[" * DEEP + "]" * DEEP, '{"a":' * 2000 + "1" + "}" * 2000, '"\\ud800"',
               '"\\u0000"', "tru", "nul", "01", "1.", ".5", "+1", "[1,]", "{,}", "// c", "", " ", "\ufeff{}", "\x00",
               '"\\x"')
YAML_TOKENS = (".nan", ".NaN", ".inf", "-.inf", "1e39", "1.0e+39", "1.0e+400", "-1.0e+400", "0x1F", "0o17", "1_000",
               "~", "yes", "no", "on", "off", "2001-12-14", "2001-12-14t21:59:43.10-05:00", "!!binary aGVsbG8=",
               "!!python/object/apply:os.system ['true']", "!!str 3", "!!float abc", "!!int 1.5", "!!set {a, b}",
               "!!omap [a: 1]", "&a [1, 2]", "*a", "*undefined", "'single'", '"\\x00"', '"\\ud800"', "<<", "=",
               "?", "-", ":", "@", "`", "%YAML 1.1", "---", "...", "\t", "1" * BIG_DIGITS, "0." + "1" * BIG_DIGITS,
               "[" * DEEP + "]" * DEEP, "{a: " * 2000 + "1" + "}" * 2000, "{[1, 2]: 3}", "{{a: 1}: 2}",
               "{? [a] : b}", "!!map {}", "!!seq []", "!custom x", "'", '"', "{", "[", "}", "]", ",", "#")

FLOATS = st.floats(allow_nan=True, allow_infinity=True) | st.sampled_from([-0.0, 1e39, -1e39, 3.4e38, 1e-45, 1e308])
INTS = st.integers(-(2**70), 2**70) | st.sampled_from([0, 1, -1, 2**31, 2**63, 2**64, -(2**63)]) | st.integers(-10, 10)
TEXT = st.text(max_size=12) | st.sampled_from(["", " ", "a" * 30, "../../etc/passwd", "org/name", "./x", "\x00",
                                                "é", "\ud800", "mb_x", "null", "true", "1e5", "%s", "{0}", "~"])


def tokens(choices: tuple[str, ...]) -> st.SearchStrategy[str]:
    """One of ``choices`` (drawn by index: Hypothesis' statistics would print every 100,000-bracket token)."""
    return st.integers(0, len(choices) - 1).map(choices.__getitem__)


def scalars(style: Style) -> st.SearchStrategy[Any]:
    choices = JSON_TOKENS if style == "json" else YAML_TOKENS + JSON_TOKENS[:7]
    return st.one_of(st.none(), st.booleans(), INTS, FLOATS, TEXT, tokens(choices).map(Raw))


def documents(style: Style, keys: st.SearchStrategy[str] | None = None, *, max_leaves: int = 12
              ) -> st.SearchStrategy[Any]:
    """Random trees; object keys from ``keys`` (a parser's own vocabulary, say) or any text."""
    key = (keys | TEXT) if keys is not None else TEXT
    return st.recursive(scalars(style), lambda inner: st.lists(inner, max_size=4)
                        | st.lists(st.tuples(key, inner), max_size=5).map(lambda p: Obj(tuple(p))),
                        max_leaves=max_leaves)


def to_tree(value: Any) -> Any:
    """A plain Python document (dicts, lists, scalars) as a tree."""
    if isinstance(value, dict):
        return Obj(tuple((k, to_tree(v)) for k, v in value.items()))
    if isinstance(value, list | tuple):
        return [to_tree(v) for v in value]
    return value


def render(tree: Any, style: Style) -> str:
    """The tree as JSON text or as flow-style YAML (a JSON-like superset: ``{a: 1, b: [x, y]}``)."""
    if isinstance(tree, Raw):
        return tree.text
    if isinstance(tree, Obj):
        return "{" + ", ".join(f"{render(k, style)}: {render(v, style)}" for k, v in tree.pairs) + "}"
    if isinstance(tree, list):
        return "[" + ", ".join(render(v, style) for v in tree) + "]"
    if isinstance(tree, bool) or tree is None:
        return json.dumps(tree)
    if isinstance(tree, float) and style == "yaml" and not math.isfinite(tree):
        return ".nan" if math.isnan(tree) else (".inf" if tree > 0 else "-.inf")
    if isinstance(tree, float) and style == "yaml" and "e" in repr(tree) and "." not in repr(tree):
        return repr(tree).replace("e", ".0e")  # YAML 1.1 reads 1e+39 as a string; 1.0e+39 is the float
    return json.dumps(tree, ensure_ascii=False)


def _paths(tree: Any, prefix: tuple[int, ...] = ()) -> list[tuple[int, ...]]:
    """Every node's path (child indices: a list item, or an object pair's value)."""
    found = [prefix]
    children = tree.pairs if isinstance(tree, Obj) else tree if isinstance(tree, list) else ()
    for i, child in enumerate(children):
        found += _paths(child[1] if isinstance(tree, Obj) else child, (*prefix, i))
    return found


def _edit(tree: Any, path: tuple[int, ...], change: Any) -> Any:
    """A copy of ``tree`` with ``change(node)`` in place of the node at ``path``."""
    if not path:
        return change(tree)
    i, rest = path[0], path[1:]
    if isinstance(tree, Obj):
        pairs = list(tree.pairs)
        pairs[i] = (pairs[i][0], _edit(pairs[i][1], rest, change))
        return Obj(tuple(pairs))
    items = list(tree)
    items[i] = _edit(items[i], rest, change)
    return items


@st.composite
def mutated(draw: st.DrawFn, valid: Any, style: Style, keys: st.SearchStrategy[str] | None = None) -> Any:
    """``valid`` (a plain document) after one to three random edits: a node replaced by a random value,
    a key dropped, an unknown or repeated key added, a node wrapped in a list."""
    tree = to_tree(valid)
    values = documents(style, keys, max_leaves=6)
    key = (keys | TEXT) if keys is not None else TEXT
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(_paths(tree)))
        kind = draw(st.sampled_from(["replace", "drop", "add", "repeat", "wrap"]))
        if kind == "replace":
            new = draw(values)
            tree = _edit(tree, path, lambda _node, new=new: new)
        elif kind == "wrap":
            tree = _edit(tree, path, lambda node: [node])
        elif kind == "drop":
            tree = _edit(tree, path, lambda node: _drop(node, draw))
        else:
            k, v = (draw(key), draw(values))
            tree = _edit(tree, path, lambda node, k=k, v=v, kind=kind: _add(node, k, v, repeat=kind == "repeat"))
    return tree


def _drop(node: Any, draw: st.DrawFn) -> Any:
    if isinstance(node, Obj) and node.pairs:
        i = draw(st.integers(0, len(node.pairs) - 1))
        return Obj(node.pairs[:i] + node.pairs[i + 1:])
    if isinstance(node, list) and node:
        i = draw(st.integers(0, len(node) - 1))
        return node[:i] + node[i + 1:]
    return node


def _add(node: Any, key: Any, value: Any, *, repeat: bool) -> Any:
    if isinstance(node, Obj):
        if repeat and node.pairs:
            key = node.pairs[0][0]
        return Obj((*node.pairs, (key, value)))
    if isinstance(node, list):
        return [*node, value]
    return node


@st.composite
def text_edits(draw: st.DrawFn, text: str, snippets: tuple[str, ...]) -> str:
    """``text`` after one to three character-level edits: a span deleted, a snippet or random text inserted,
    a line repeated. Catches what structure-aware mutation cannot (indentation, a cut token, a stray quote)."""
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["delete", "insert", "snippet", "repeat_line"]))
        at = draw(st.integers(0, len(text)))
        if kind == "delete":
            text = text[:at] + text[at + draw(st.integers(1, 20)):]
        elif kind == "insert":
            text = text[:at] + draw(st.text(max_size=5)) + text[at:]
        elif kind == "snippet":
            text = text[:at] + draw(tokens(snippets)) + text[at:]
        else:
            lines = text.splitlines(keepends=True)
            if lines:
                i = draw(st.integers(0, len(lines) - 1))
                lines.insert(i, lines[i])
                text = "".join(lines)
    return text


def encoded(text: str) -> bytes:
    """File bytes of ``text``: UTF-8, with lone surrogates kept as (invalid) bytes instead of failing."""
    return text.encode("utf-8", errors="surrogatepass")
