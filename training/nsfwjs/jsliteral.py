"""A reader for the JavaScript literal subset that nsfwjs's minified bundles contain.

``model.min.js`` is a browserify bundle whose single module exports the ``model.json`` as a
minified JavaScript object literal (unquoted keys, ``!0`` / ``!1`` for booleans, numbers such as
``.03`` or ``1e-3``). Nothing here runs JavaScript: a small parser reads the literal subset that
the minifier emits and refuses anything else with the offset where it stopped.
"""

from __future__ import annotations

import logging
import math
import re
from typing import TypeAlias

from training.nsfwjs.errors import ImportFailed

logger = logging.getLogger(__name__)

JsValue: TypeAlias = "bool | int | float | str | list[JsValue] | dict[str, JsValue] | None"
JsObject: TypeAlias = "dict[str, JsValue]"

_MAX_DEPTH = 256

_TOKEN = re.compile(
    r"""
    (?P<num>-?(?:0[xX][0-9a-fA-F]+|(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?))
    |(?P<str>"[^"\\]*(?:\\[\s\S][^"\\]*)*"|'[^'\\]*(?:\\[\s\S][^'\\]*)*')
    |(?P<bang>![01](?![\w$.]))
    |(?P<ident>[A-Za-z_$][\w$]*)
    |(?P<punct>[{}\[\]:,])
    """,
    re.VERBOSE,
)
_SPACE = re.compile(r"\s*")
_ESCAPE = re.compile(r"\\(x[0-9a-fA-F]{2}|u\{[0-9a-fA-F]{1,6}\}|u[0-9a-fA-F]{4}|\r\n|[\s\S])")
_SIMPLE_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "b": "\b", "f": "\f", "v": "\v", "0": "\0"}
_LINE_CONTINUATIONS = {"\n", "\r", "\r\n", "\u2028", "\u2029"}
_KEYWORDS: dict[str, JsValue] = {
    "true": True,
    "false": False,
    "null": None,
    "Infinity": math.inf,
    "NaN": math.nan,
}

# The browserify prelude calls module 1 as function(require, module, exports); the minifier
# renames the three parameters differently in every file, so capture the second one.
_BUNDLE_ENTRY = re.compile(
    r"\{1:\[function\(([\w$]+),([\w$]+),([\w$]+)\)\{\s*(?:\"use strict\";)?\s*\2\.exports\s*="
)
_BUNDLE_EXIT = re.compile(r"\s*;?\s*\}\s*,\s*\{\s*\}\s*\]")


class _Parser:
    """Recursive descent over the JS literal subset; positions are character offsets."""

    def __init__(self, text: str, source: str) -> None:
        self.text = text
        self.source = source

    def fail(self, pos: int, what: str) -> ImportFailed:
        snippet = self.text[pos : pos + 40].replace("\n", " ")
        return ImportFailed(
            f"{self.source}: {what} at offset {pos} (near {snippet!r}); "
            "the file is not the JS literal subset that nsfwjs bundles contain"
        )

    def skip_space(self, pos: int) -> int:
        match = _SPACE.match(self.text, pos)
        return pos if match is None else match.end()

    def token(self, pos: int) -> tuple[str, str, int]:
        """Return (kind, text, end) of the token at ``pos`` (whitespace skipped)."""
        pos = self.skip_space(pos)
        if pos >= len(self.text):
            raise self.fail(pos, "unexpected end of input")
        if self.text[pos] == '"':
            # Fast path for long escape-free strings such as a shard's base64 payload.
            end = self.text.find('"', pos + 1)
            if end > 0 and self.text.find("\\", pos + 1, end) < 0:
                return "str", self.text[pos : end + 1], end + 1
        match = _TOKEN.match(self.text, pos)
        if match is None or match.lastgroup is None:
            raise self.fail(pos, "unexpected character")
        return match.lastgroup, match.group(), match.end()

    def value(self, pos: int, depth: int = 0) -> tuple[JsValue, int]:
        if depth > _MAX_DEPTH:
            raise self.fail(pos, f"nesting deeper than {_MAX_DEPTH}")
        kind, text, end = self.token(pos)
        if kind == "num":
            return _number(text), end
        if kind == "str":
            return _string(text), end
        if kind == "bang":
            return text == "!0", end
        if kind == "ident":
            if text == "void":
                kind2, _, end2 = self.token(end)
                if kind2 == "num":
                    return None, end2
                raise self.fail(end, "expected a number after 'void'")
            if text in _KEYWORDS:
                return _KEYWORDS[text], end
            raise self.fail(pos, f"identifier {text!r} is not a literal")
        if text == "{":
            return self.object(end, depth + 1)
        if text == "[":
            return self.array(end, depth + 1)
        raise self.fail(pos, f"unexpected {text!r}")

    def object(self, pos: int, depth: int) -> tuple[JsObject, int]:
        result: JsObject = {}
        while True:
            kind, text, end = self.token(pos)
            if text == "}":
                return result, end
            if kind == "ident" or kind == "num":
                key = text
            elif kind == "str":
                key = _string(text)
            else:
                raise self.fail(pos, "expected a property name")
            colon_at = self.skip_space(end)
            _, colon, end = self.token(colon_at)
            if colon != ":":
                raise self.fail(colon_at, f"expected ':' after property {key!r}")
            result[key], pos = self.value(end, depth)
            _, sep, end = self.token(pos)
            if sep == "}":
                return result, end
            if sep != ",":
                raise self.fail(pos, "expected ',' or '}' in an object")
            pos = end

    def array(self, pos: int, depth: int) -> tuple[list[JsValue], int]:
        result: list[JsValue] = []
        while True:
            _, text, end = self.token(pos)
            if text == "]":
                return result, end
            item, pos = self.value(pos, depth)
            result.append(item)
            _, sep, end = self.token(pos)
            if sep == "]":
                return result, end
            if sep != ",":
                raise self.fail(pos, "expected ',' or ']' in an array")
            pos = end


def _number(text: str) -> int | float:
    body = text.lstrip("-")
    sign = -1 if text.startswith("-") else 1
    if body[:2] in ("0x", "0X"):
        return sign * int(body, 16)
    if body.isdigit():
        return sign * int(body)
    return float(text)


def _unescape(match: re.Match[str]) -> str:
    esc = match.group(1)
    if esc in _LINE_CONTINUATIONS:
        return ""
    if esc.startswith("x"):
        return chr(int(esc[1:], 16))
    if esc.startswith("u{"):
        return chr(int(esc[2:-1], 16))
    if esc.startswith("u"):
        return chr(int(esc[1:], 16))
    return _SIMPLE_ESCAPES.get(esc, esc)


def _string(token: str) -> str:
    body = token[1:-1]
    if "\\" not in body:
        return body
    text = _ESCAPE.sub(_unescape, body)
    # \uD83D\uDE00 style escapes leave surrogate halves; join them into real characters.
    return text.encode("utf-16", "surrogatepass").decode("utf-16")


def parse_js_literal(text: str, *, source: str = "<literal>") -> JsValue:
    """Parse one JS literal (object, array, string, number, ``!0``/``!1``, ...) filling ``text``.

    Raises ImportFailed naming ``source`` and the offset of the first thing it cannot read.
    """
    parser = _Parser(text, source)
    value, end = parser.value(0)
    end = parser.skip_space(end)
    if end != len(text):
        raise parser.fail(end, "trailing characters after the literal")
    return value


def bundle_export(bundle: str, *, source: str) -> JsValue:
    """Return the literal that a browserify bundle's entry module assigns to ``module.exports``.

    Raises ImportFailed when ``bundle`` is not such a bundle or the literal cannot be read.
    """
    entry = _BUNDLE_ENTRY.search(bundle)
    if entry is None:
        raise ImportFailed(
            f"{source}: no browserify module 1 assigning 'module.exports' was found; "
            "expected an nsfwjs 4.x model bundle (model.min.js or group1-shard*.min.js)"
        )
    parser = _Parser(bundle, source)
    value, end = parser.value(entry.end())
    if _BUNDLE_EXIT.match(bundle, end) is None:
        raise parser.fail(end, "the exported literal is followed by more code")
    return value
