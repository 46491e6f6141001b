"""JSON the way Go's encoding/json reads and writes it, without `import json`.

Why: the reference flannel plugin is Go. The delegate config it saves is `json.Marshal` of a
`map[string]interface{}`: keys sorted, no spaces, `<`/`>`/`&` and U+2028/U+2029 escaped, every
JSON number decoded as float64 and printed with Go's shortest-float rules. Saved state must match
it byte for byte. And `import json` costs ~10 ms (it pulls in `re`, `enum`, `functools`) on a
path where interpreter start is the bottleneck; the C scanner and string encoder in `_json`
do the real work without any of that.

`GoStruct` marks a mapping that Go would print as a struct (fields in declaration order,
not sorted), e.g. a `types.Route`.
"""

from __future__ import annotations

import _json

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

_WS = " \t\n\r"


class DecodeError(ValueError):
    """The text is not one JSON value (or has trailing garbage)."""


class GoStruct(dict):  # type: ignore[type-arg]
    """A mapping printed in insertion order, like a Go struct (fields in declaration order)."""


def _reject_constant(name: str) -> Any:
    raise DecodeError(f"invalid character {name[0]!r} looking for beginning of value")


class _ScanContext:
    """The attributes `_json.make_scanner` reads (what json.JSONDecoder normally provides)."""

    def __init__(self, parse_int: Callable[[str], Any]) -> None:
        self.strict = True
        self.object_hook = None
        self.object_pairs_hook = None
        self.parse_float: Callable[[str], float] = float
        self.parse_int = parse_int
        self.parse_constant = _reject_constant
        self.memo: dict[str, str] = {}


def _float64(text: str) -> float:
    """A JSON number as Go's float64: one beyond its range is a decode error, not inf."""
    value = float(text)
    if value in (_INF, -_INF):
        raise DecodeError(f"json: number {text[:40]} out of range of float64")
    return value


_INF = float("inf")


class _Float64Context(_ScanContext):
    def __init__(self, parse_int: Callable[[str], Any]) -> None:
        super().__init__(parse_int)
        self.parse_float = _float64


# Go decodes every JSON number into an interface{} as float64; results keep Python ints.
_go_scanner = _json.make_scanner(_Float64Context(_float64))  # type: ignore[arg-type]
_int_scanner = _json.make_scanner(_Float64Context(int))  # type: ignore[arg-type]


def to_bytes(text: str) -> bytes:
    """UTF-8 for output; lone surrogates (from undecodable input) become U+FFFD, as in Go."""
    try:
        return text.encode()
    except UnicodeEncodeError:
        return "".join("\ufffd" if "\ud800" <= c <= "\udfff" else c for c in text).encode()


def loads(text: str | bytes, go_numbers: bool = False) -> Any:
    """Decode one JSON value. `go_numbers`: every number becomes a float, as in Go."""
    if isinstance(text, bytes):
        # Go replaces invalid UTF-8 with U+FFFD instead of failing.
        text = text.decode("utf-8", "replace")
    scan = _go_scanner if go_numbers else _int_scanner
    start = len(text) - len(text.lstrip(_WS))
    try:
        try:
            value, end = scan(text, start)
        except SystemError:
            # _json reports syntax errors through json.decoder.JSONDecodeError, which it only
            # finds when json.decoder is already imported: import it now (error path only).
            import json.decoder  # noqa: F401

            value, end = scan(text, start)
    except StopIteration as exc:
        raise DecodeError(f"invalid JSON at offset {exc.value}") from None
    except (ValueError, RecursionError) as exc:  # json.decoder.JSONDecodeError is a ValueError
        raise DecodeError(str(exc)) from None
    if text[end:].strip(_WS):
        raise DecodeError(f"invalid character after top-level value at offset {end}")
    return value


def go_float(value: float) -> str:
    """Format a float64 as Go's encoding/json does ('f' form, 'e' outside [1e-6, 1e21))."""
    if value != value or value in (float("inf"), float("-inf")):
        raise ValueError(f"json: unsupported value: {value!r}")
    if value == 0:
        return "-0" if str(value).startswith("-") else "0"
    mag = -value if value < 0 else value
    sign = "-" if value < 0 else ""
    if mag < 9007199254740992.0 and value.is_integer():
        return sign + str(int(mag))
    # Shortest round-trip digits (Python's repr and Go's -1 precision agree on them).
    text = repr(mag)
    mantissa, _, exp_text = text.partition("e")
    exponent = int(exp_text) if exp_text else 0
    whole, _, frac = mantissa.partition(".")
    digits = (whole + frac).lstrip("0")
    point = len(whole) + exponent - (len(whole + frac) - len((whole + frac).lstrip("0")))
    digits = digits.rstrip("0") or "0"
    if mag < 1e-6 or mag >= 1e21:
        exp10 = point - 1
        body = digits[0] + ("." + digits[1:] if len(digits) > 1 else "")
        # Go prints at least two exponent digits, then trims "e-07" to "e-7".
        exp_str = f"{abs(exp10):02d}"
        if exp10 < 0 and exp_str.startswith("0"):
            exp_str = exp_str[1:]
        return f"{sign}{body}e{'-' if exp10 < 0 else '+'}{exp_str}"
    if point <= 0:
        return f"{sign}0.{'0' * -point}{digits}"
    if point >= len(digits):
        return sign + digits + "0" * (point - len(digits))
    return f"{sign}{digits[:point]}.{digits[point:]}"


def go_string(value: str) -> str:
    """Quote a string as Go does: UTF-8 kept, HTML-sensitive characters escaped."""
    out: str = _json.encode_basestring(value)
    for char, escape in _GO_EXTRA_ESCAPES:
        if char in out:
            out = out.replace(char, escape)
    return out


_GO_EXTRA_ESCAPES = (
    ("<", "\\u003c"),
    (">", "\\u003e"),
    ("&", "\\u0026"),
    ("\u2028", "\\u2028"),
    ("\u2029", "\\u2029"),
)


def _encode(value: Any, out: list[str], sort_keys: bool = True) -> None:
    """Go's encoding of ``value``; maps sorted by key (as json.Marshal does) unless
    ``sort_keys`` is off or the map is a GoStruct (fields in declaration order)."""
    if value is None:
        out.append("null")
    elif value is True:
        out.append("true")
    elif value is False:
        out.append("false")
    elif isinstance(value, str):
        out.append(go_string(value))
    elif isinstance(value, float):
        out.append(go_float(value))
    elif isinstance(value, int):
        out.append(str(value))
    elif isinstance(value, dict):
        keys = sorted(value) if sort_keys and not isinstance(value, GoStruct) else list(value)
        out.append("{")
        for i, key in enumerate(keys):
            if i:
                out.append(",")
            out.append(go_string(key))
            out.append(":")
            _encode(value[key], out, sort_keys)
        out.append("}")
    elif isinstance(value, list | tuple):
        out.append("[")
        for i, item in enumerate(value):
            if i:
                out.append(",")
            _encode(item, out, sort_keys)
        out.append("]")
    else:
        raise TypeError(f"cannot encode {type(value).__name__} as JSON")


def marshal(value: Any) -> bytes:
    """Bytes identical to Go's `json.Marshal` of the same value (maps sorted by key)."""
    out: list[str] = []
    _encode(value, out)
    return to_bytes("".join(out))


def dumps(value: Any) -> str:
    """Compact JSON for results and errors (dict order kept; only keys we built)."""
    out: list[str] = []
    _encode(value, out, sort_keys=False)
    return "".join(out)
