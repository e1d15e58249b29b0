"""A GBNF grammar from an agent's JSON schema, for ``P8FS_LLM_STRUCTURED_OUTPUT=grammar``.

llama.cpp's servers (the C++ ``llama-server`` and llama-cpp-python's) take a ``grammar`` field:
a GBNF grammar every sampled token must follow, so the answer *cannot* leave the schema's shape.
That is the strongest structured output a local server offers and it needs nothing from the
model (no tool-calling template, no JSON training), which is why small local models want it.

The grammar is written here from ``model_json_schema()``; the servers' own converters live in
their process (llama-cpp-python's is not importable from ours). It covers what pydantic emits
for p8fs agents: objects (required properties in order, optional ones after them, each
optional), ``$ref``/``$defs``, ``anyOf``/``oneOf``, ``enum``/``const``, arrays with
``minItems``/``maxItems``, strings (``date-time`` as RFC 3339 with its zone, ``date``, each field in its range),
integers and numbers (no minus sign when ``minimum >= 0``), booleans and null. Anything else
(``{}``, free-form dicts) becomes any JSON value. What a grammar cannot say (string lengths,
numeric ranges beyond the sign) pydantic still validates after the answer.

Whitespace is one optional space between tokens: a grammar that allows any run of whitespace
lets a small model emit newlines until ``max_tokens``.
"""

from __future__ import annotations

import json
import re
from typing import Any

#: Rules every grammar carries (any JSON value, for schemas that allow anything).
_BASE_RULES = {
    "ws": '" "?',
    "char": r'[^"\\\x7F\x00-\x1F] | "\\" (["\\/bfnrt] | "u" [0-9a-fA-F]{4})',
    "string": r'"\"" char* "\""',
    "integer": '"-"? ("0" | [1-9] [0-9]{0,15})',
    "uinteger": '"0" | [1-9] [0-9]{0,15}',
    "fraction": '"." [0-9]{1,16}',
    "exponent": "[eE] [-+]? [0-9]{1,3}",
    "number": "integer fraction? exponent?",
    "unumber": "uinteger fraction? exponent?",
    "boolean": '"true" | "false"',
    "null": '"null"',
    "value": "object | array | string | number | boolean | null",
    "object": '"{" ws (string ":" ws value ("," ws string ":" ws value)*)? "}"',
    "array": '"[" ws (value ("," ws value)*)? "]"',
    # Months, days, hours and minutes in their ranges: a small model otherwise writes month 13.
    "date": '[12] [0-9]{3} "-" ("0" [1-9] | "1" [0-2]) "-" ("0" [1-9] | [12] [0-9] | "3" [01])',
    "time": (
        '([01] [0-9] | "2" [0-3]) ":" [0-5] [0-9] (":" [0-5] [0-9] ("." [0-9]{1,6})?)? '
        '("Z" | [+-] ([01] [0-9] | "2" [0-3]) ":" [0-5] [0-9])'
    ),
    "datetimestr": r'"\"" date "T" time "\""',
    "datestr": r'"\"" date "\""',
}


def _literal(value: Any) -> str:
    """A GBNF string literal matching ``value`` written as compact JSON."""
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


class _Builder:
    """Turns one schema into named rules; ``$defs`` become one rule each."""

    def __init__(self, schema: dict[str, Any]) -> None:
        self.schema = schema
        self.defs: dict[str, Any] = {**schema.get("definitions", {}), **schema.get("$defs", {})}
        self.rules: dict[str, str] = {}
        self.used_base: set[str] = set()

    def _name(self, hint: str) -> str:
        base = re.sub(r"[^a-zA-Z0-9]+", "-", hint).strip("-").lower() or "rule"
        name, n = base, 1
        while name in self.rules or name in _BASE_RULES:
            n += 1
            name = f"{base}{n}"
        return name

    def rule(self, schema: Any, hint: str) -> str:
        """An expression for ``schema`` (adding the rules it needs)."""
        if not isinstance(schema, dict) or not schema:
            return "value"
        if "$ref" in schema:
            ref = str(schema["$ref"])
            key = ref.rsplit("/", 1)[-1]
            name = "def-" + re.sub(r"[^a-zA-Z0-9]+", "-", key).lower()
            if name not in self.rules:
                self.rules[name] = ""  # reserved first: recursive models refer to themselves
                self.rules[name] = self.rule(self.defs.get(key, {}), key)
            return name
        if "const" in schema:
            return _literal(schema["const"])
        if "enum" in schema:
            return "(" + " | ".join(_literal(v) for v in schema["enum"]) + ")"
        for key in ("anyOf", "oneOf"):
            if key in schema:
                return "(" + " | ".join(self.rule(s, hint) for s in schema[key]) + ")"
        if "allOf" in schema and len(schema["allOf"]) == 1:
            return self.rule(schema["allOf"][0], hint)
        kind = schema.get("type")
        if isinstance(kind, list):
            return "(" + " | ".join(self.rule({**schema, "type": k}, hint) for k in kind) + ")"
        if kind == "object":
            return self._object(schema, hint)
        if kind == "array":
            return self._array(schema, hint)
        if kind == "string":
            fmt = schema.get("format")
            return {"date-time": "datetimestr", "date": "datestr"}.get(str(fmt), "string")
        if kind == "integer":
            return "uinteger" if _non_negative(schema) else "integer"
        if kind == "number":
            return "unumber" if _non_negative(schema) else "number"
        if kind == "boolean":
            return "boolean"
        if kind == "null":
            return "null"
        return "value"

    def _object(self, schema: dict[str, Any], hint: str) -> str:
        properties: dict[str, Any] = schema.get("properties") or {}
        if not properties:
            return "object"
        required = [p for p in properties if p in set(schema.get("required", ()))]
        optional = [p for p in properties if p not in required]
        name = self._name(str(schema.get("title") or hint))
        self.rules[name] = ""  # reserve the name before the properties take theirs
        pairs = {
            p: f'{_literal(p)} ":" ws {self.rule(properties[p], f"{name}-{p}")}' for p in properties
        }
        if required:
            body = ' "," ws '.join(pairs[p] for p in required)
            body += "".join(f' ("," ws {pairs[p]})?' for p in optional)
        else:
            # No required property: any one optional property may come first.
            starts = []
            for i, first in enumerate(optional):
                rest = "".join(f' ("," ws {pairs[p]})?' for p in optional[i + 1 :])
                starts.append(pairs[first] + rest)
            body = "(" + " | ".join(starts) + ")?"
        self.rules[name] = f'"{{" ws {body} ws "}}"'
        return name

    def _array(self, schema: dict[str, Any], hint: str) -> str:
        item = self.rule(schema.get("items", {}), hint + "-item")
        low = int(schema.get("minItems", 0) or 0)
        high = schema.get("maxItems")
        name = self._name(hint + "-list")
        if high is not None and int(high) == 0:
            self.rules[name] = '"[" ws "]"'
            return name
        more = f'("," ws {item})'
        if high is None:
            tail = f"{more}*" if low <= 1 else f"{more}{{{low - 1},}}"
        else:
            tail = f"{more}{{{max(low - 1, 0)},{int(high) - 1}}}"
        inner = f"{item} {tail}"
        self.rules[name] = f'"[" ws {inner} ws "]"' if low else f'"[" ws ({inner})? ws "]"'
        return name


def _non_negative(schema: dict[str, Any]) -> bool:
    for key in ("minimum", "exclusiveMinimum"):
        value = schema.get(key)
        if isinstance(value, int | float) and value >= 0:
            return True
    return False


def json_schema_to_gbnf(schema: dict[str, Any]) -> str:
    """The GBNF grammar whose sentences are JSON documents in the shape of ``schema``."""
    builder = _Builder(schema)
    top = builder.rule(schema, str(schema.get("title") or "answer"))
    lines = [f"root ::= {top}"]
    lines += [f"{name} ::= {body}" for name, body in builder.rules.items()]
    lines += [f"{name} ::= {body}" for name, body in _BASE_RULES.items()]
    return "\n".join(lines) + "\n"


def grammar_for(model: type[Any]) -> str:
    """The grammar of a pydantic model's JSON schema (cached per class: it never changes)."""
    cached = _CACHE.get(model)
    if cached is None:
        cached = _CACHE[model] = json_schema_to_gbnf(model.model_json_schema())
    return cached


_CACHE: dict[type[Any], str] = {}
