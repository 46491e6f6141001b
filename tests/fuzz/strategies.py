"""Hypothesis strategies shared by the fuzz targets: junk JSON values and hostile documents.

Why one place: every input read from outside (etcd values, CNI stdin) gets the same kinds of
abuse - wrong JSON types, huge and negative numbers, unicode (including lone surrogates from
``\\ud800`` escapes), nested junk, field names in any letter case, raw bytes and mutated
documents - so each target only adds what is specific to its format.
"""

from __future__ import annotations

import json
import random
from functools import cache
from typing import Any

from hypothesis import strategies as st

HUGE = 1 << 200
# Nesting deeper than the interpreter's recursion limit (the C JSON scanner counts against it).
DEEP = 3000

scalars: st.SearchStrategy[Any] = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(1 << 70), 1 << 70),
    st.sampled_from([0, -1, 1, HUGE, -HUGE, 2**31, 2**32, 2**64]),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=12),
    st.sampled_from(["", " ", "\u0000", "\ud800", "\u202e", "\uff11\uff12", "null", "true", "1e999"]),
)

_keys = st.text(max_size=6)
# Nested junk, two levels deep at most: st.recursive costs twice as much per example, and the
# parsers under test look at most one level into a value before rejecting its type.
junk: st.SearchStrategy[Any] = st.one_of(
    scalars,
    st.lists(scalars, max_size=3),
    st.dictionaries(_keys, scalars, max_size=3),
    st.dictionaries(_keys, st.lists(scalars, max_size=2), max_size=2),
)


@cache
def ints(low: int, high: int) -> st.SearchStrategy[int]:
    """A cached ``st.integers``: building strategies inside a composite draw is what makes
    hypothesis slow (each new one is validated again), so composites only draw cached ones."""
    return st.integers(low, high)


def chance(draw: st.DrawFn, one_in: int) -> bool:
    """True with probability 1/one_in (as hypothesis sees it: shrinks towards False)."""
    return draw(ints(0, one_in - 1)) == one_in - 1


@cache
def case_variant(name: str) -> st.SearchStrategy[str]:
    """The field name as written, in lower/upper/swapped case, or with alternate letters
    flipped (Go's decoder, and so flannel's, matches field names case-insensitively)."""
    alternate = "".join(c.swapcase() if i % 2 else c for i, c in enumerate(name))
    variants = dict.fromkeys([name, name.lower(), name.upper(), name.swapcase(), alternate])
    return st.sampled_from(list(variants))


def dumps(obj: Any) -> str:
    """JSON text of a generated document; lone surrogates survive as \\uXXXX escapes."""
    return json.dumps(obj, ensure_ascii=True)


def deep_document(field_name: str | None) -> st.SearchStrategy[str]:
    """``[[[[...]]]]`` (or ``{"Field": [[[...`` ) nested DEEP times, closed or truncated."""
    def build(opener: str, closed: bool) -> str:
        closer = {"[": "]", "{\"a\":": "}"}[opener]
        body = opener * DEEP + "1" + (closer * DEEP if closed else "")
        return body if field_name is None else "{" + json.dumps(field_name) + ":" + body + "}"
    return st.builds(build, st.sampled_from(["[", "{\"a\":"]), st.booleans())


def mutated(valid: bytes) -> st.SearchStrategy[bytes]:
    """Truncations, single-byte flips and inserted junk bytes of a valid document."""
    n = len(valid)
    return st.one_of(
        st.integers(0, n).map(lambda i: valid[:i]),
        st.tuples(st.integers(0, n - 1), st.integers(1, 255)).map(
            lambda t: valid[: t[0]] + bytes([valid[t[0]] ^ t[1]]) + valid[t[0] + 1:]),
        st.tuples(st.integers(0, n), st.binary(min_size=1, max_size=4)).map(
            lambda t: valid[: t[0]] + t[1] + valid[t[0]:]),
    )


raw_junk: st.SearchStrategy[bytes] = st.one_of(
    st.binary(max_size=64),
    st.text(max_size=32).map(lambda s: s.encode("utf-8", "surrogatepass")),
    junk.map(lambda v: dumps(v).encode()),
)


def weighted(*choices: tuple[int, st.SearchStrategy[Any]]) -> st.SearchStrategy[Any]:
    """``one_of`` with explicit weights (percent-like). A plain one_of lets hypothesis drift
    towards whichever branch is cheapest; and a branch index drawn from a small set gets
    "exhausted" by hypothesis' novelty search, after which it stops picking the common
    branches. So the branch is sampled from a wide table (100 entries per unit of weight),
    shuffled because hypothesis favours the first entries of a sampled list."""
    table = [i for i, (weight, _) in enumerate(choices) for _ in range(weight * 100)]
    random.Random(len(table)).shuffle(table)
    pick = st.sampled_from(table)

    @st.composite
    def draw_one(draw: st.DrawFn) -> Any:
        return draw(choices[draw(pick)][1])

    return draw_one()


def presence(percent: dict[str, int], patterns: int = 64) -> st.SearchStrategy[tuple[str, ...]]:
    """Which optional fields a document has, as one draw: ``patterns`` field sets picked once
    (fixed seed) with the given per-field percentages. One draw instead of one per field
    halves hypothesis' cost per case, which is what bounds a 10,000-case run."""
    rng = random.Random(len(percent) * 7919 + patterns)
    return st.sampled_from([tuple(n for n, pct in percent.items() if rng.randrange(100) < pct)
                            for _ in range(patterns)])


CASE_STYLE = st.sampled_from(["as-is", "as-is", "as-is", "lower", "upper", "swap", "alternate"])


def styled(name: str, style: str) -> str:
    """``name`` in one letter-case style (drawn once per document from CASE_STYLE)."""
    if style == "alternate":
        return "".join(c.swapcase() if i % 2 else c for i, c in enumerate(name))
    return {"lower": name.lower(), "upper": name.upper(), "swap": name.swapcase()}.get(style,
                                                                                        name)
