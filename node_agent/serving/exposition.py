"""A fast parser for the Prometheus text exposition format (what vLLM's /metrics serves).

It accepts what prometheus_client's own parser accepts, sample for sample (a property
test, tests/serving/test_exposition_differential.py, holds the two side by side and lists
the exceptions), except for laxities of that parser which the Prometheus server refuses
too and no engine writes: extra tokens after the value, an unchecked or UTF-8 quoted
metric or label name, a label without a value, empty terms between commas, non-ASCII
digits, and whitespace other than space and tab between tokens. Those are errors here.
Unlike Python's float(), a value is never `1_000`, ` 1` or Unicode digits.

Speed matters: the benchmark parses every simulated scrape. A scrape repeats the same
few hundred names and label sets, so each distinct one is checked and split once (by
compiled expressions) and remembered; afterwards a line costs a split, a dict lookup and
a float(). The per-character loop this replaced was about seven times slower.
"""

from __future__ import annotations

import math
import re
from typing import NamedTuple


class ExpositionError(ValueError):
    pass


class Sample(NamedTuple):
    # A NamedTuple, not a frozen dataclass: building one per sample is the parser's
    # biggest fixed cost, and a tuple is built in C.
    name: str
    labels: tuple[tuple[str, str], ...]
    value: float

    def label(self, key: str) -> str | None:
        for k, v in self.labels:
            if k == key:
                return v
        return None


_NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*+"
# Label names as prometheus_client reads them unquoted (its metric-name pattern, so a
# colon passes), minus the reserved double-underscore prefix.
_LABEL_NAME = r"(?!__)[a-zA-Z_:][a-zA-Z0-9_:]*+"
_LABEL = _LABEL_NAME + r'[ \t]*+=[ \t]*+"(?:[^"\\]++|\\.)*+"'
# What Go's strconv.ParseFloat takes once Prometheus has refused '_', 'p' and 'P'
# (decimal, Inf/Infinity/NaN in any case), ASCII only. Python's float() alone would
# also take '1_000', ' 1 ' and Unicode digits. A leading sign on NaN passes as in
# prometheus_client (Python's float() reads it; it is NaN either way).
_NUMBER = (
    r"[+-]?+(?:(?:[0-9]++(?:\.[0-9]*+)?|\.[0-9]++)(?:[eE][+-]?+[0-9]++)?|(?i:inf(?:inity)?|nan))"
)
# What follows the label set: the value and an optional timestamp (blanks before the
# value are optional after '}', as prometheus_client reads `m{a="b"}1`).
_TAIL = re.compile(rf"[ \t]*+({_NUMBER})(?:[ \t]++{_NUMBER})?")
_BARE_LINE = re.compile(rf"({_NAME})[ \t]++({_NUMBER})(?:[ \t]++{_NUMBER})?")
_NAME_BLANKS = re.compile(rf"({_NAME})[ \t]*+")
_METRIC_NAME = re.compile(_NAME)
# Between the braces: a leading or a trailing comma is tolerated as prometheus_client
# tolerates it; two in a row are not.
_LABEL_SET = re.compile(rf"[ \t]*+,?[ \t]*+(?:{_LABEL}[ \t]*+,[ \t]*+)*+(?:{_LABEL})?[ \t]*+")
_LABEL_PAIR = re.compile(rf'({_LABEL_NAME})[ \t]*+=[ \t]*+"((?:[^"\\]++|\\.)*+)"')
# Only these three escapes mean something; any other backslash stays as written
# (prometheus_client's reading; Go would refuse it).
_ESCAPE = re.compile(r'\\[\\n"]')
_UNESCAPED = {"\\\\": "\\", "\\n": "\n", '\\"': '"'}
# The types prometheus_client knows (the Go parser knows the first five).
_TYPES = frozenset(
    [
        *("counter", "gauge", "histogram", "summary", "untyped"),
        *("unknown", "gaugehistogram", "info", "stateset"),
    ]
)

# Everything before a sample's last '}' (its name and label set) -> (name, labels).
# A scrape repeats the same few hundred heads every time, so each is checked and split
# once; only the value changes. Bounded: a churning endpoint just empties it.
_HEADS: dict[str, tuple[str, tuple[tuple[str, str], ...]]] = {}
_HEADS_MAX = 16384


def _unescape(value: str) -> str:
    return _ESCAPE.sub(lambda m: _UNESCAPED[m.group(0)], value)


def _check_comment(line: str, line_no: int) -> None:
    """HELP and TYPE lines must name a valid metric (and TYPE a known type); others are free.

    As in prometheus_client, the word after the first blank counts ("#x TYPE m" is a TYPE
    line) and a TYPE line without a name or type is an error.
    """
    parts = line.split(None, 3)
    if len(parts) < 2 or parts[1] not in ("HELP", "TYPE"):
        return
    if len(parts) > 2 and _METRIC_NAME.fullmatch(parts[2]) is None:
        raise ExpositionError(f"line {line_no}: bad metric name in {parts[1]} line: {line!r}")
    if parts[1] == "TYPE" and (len(parts) < 4 or parts[3] not in _TYPES):
        raise ExpositionError(f"line {line_no}: bad TYPE line: {line!r}")


def _head(head: str, line_no: int) -> tuple[str, tuple[tuple[str, str], ...]]:
    """Check and split `name{labels` (the text before the last '}'), and remember it."""
    before, brace, body = head.partition("{")  # a name holds no '{', so this one opens
    m = _NAME_BLANKS.fullmatch(before)
    if not brace or m is None:
        raise ExpositionError(f"line {line_no}: bad metric name or label set in {head[:200]!r}")
    # The last '}' of the line closes the set unless the set is malformed, and then the
    # full grammar below refuses it (a '}' outside quotes cannot pass).
    if _LABEL_SET.fullmatch(body) is None:
        raise ExpositionError(f"line {line_no}: malformed label set in {head[:200]!r}")
    pairs = _LABEL_PAIR.findall(body)
    if len(dict(pairs)) != len(pairs):
        raise ExpositionError(f"line {line_no}: duplicate label name in {head[:200]!r}")
    if "\\" in body:
        pairs = [(k, _unescape(v)) for k, v in pairs]
    out = (m.group(1), tuple(pairs))
    if len(_HEADS) >= _HEADS_MAX:
        _HEADS.clear()
    _HEADS[head] = out
    return out


def _value(tail: str, line_no: int) -> float:
    """The value of `<blanks>value[ timestamp]` (the timestamp is checked, then dropped)."""
    # Fast path: printable ASCII without '_' has only ' ' as whitespace, and on such
    # tokens float() accepts exactly _NUMBER. Anything else takes the full grammar.
    if tail.isascii() and tail.isprintable() and "_" not in tail:
        tokens = tail.split()
    else:
        m = _TAIL.fullmatch(tail)
        tokens = tail.split() if m is not None else []
    try:
        if len(tokens) == 1:
            return float(tokens[0])
        if len(tokens) == 2:
            float(tokens[1])
            return float(tokens[0])
    except ValueError:
        pass
    raise ExpositionError(f"line {line_no}: bad value or timestamp {tail.strip()[:100]!r}")


def parse(text: str) -> list[Sample]:
    """Every sample of an exposition text, in order; ExpositionError names the first bad line."""
    samples: list[Sample] = []
    append = samples.append
    heads = _HEADS
    # Lines end at '\n' only: '\r' or U+2028 may sit inside a label value (and a CRLF
    # line loses its '\r' to strip()).
    for line_no, raw in enumerate(text.split("\n"), start=1):
        line = raw.strip()
        if not line:
            continue
        if line[0] == "#":
            _check_comment(line, line_no)
            continue
        head, brace, tail = line.rpartition("}")
        if brace:
            name, labels = heads.get(head) or _head(head, line_no)
            append(Sample(name, labels, _value(tail, line_no)))
            continue
        m = _BARE_LINE.fullmatch(line)
        if m is None:
            raise ExpositionError(f"line {line_no}: not a sample: {raw[:200]!r}")
        append(Sample(m.group(1), (), float(m.group(2))))
    return samples


def finite(value: float) -> bool:
    return math.isfinite(value)
