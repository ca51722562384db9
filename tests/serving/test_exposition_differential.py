"""Our exposition parser against prometheus_client's, on generated valid and invalid texts.

Property: where prometheus_client accepts a text, ours yields the same samples (name,
labels, value, in order); where it refuses one, ours raises ExpositionError. Where ours
refuses a text prometheus_client accepts, the refused line must fall in one of the
deliberate classes below, each of which the Prometheus server (Go) refuses too and no
serving engine writes (vLLM and SGLang expose through prometheus_client's own writer):

- EXTRA_TOKENS: more than a value and a timestamp after the name or label set;
  prometheus_client keeps the first and last and silently drops the rest (`m 1 x 2`).
- NAME: a metric name that is not [a-zA-Z_:][a-zA-Z0-9_:]*: prometheus_client never
  checks the name before a label set (`m-x{a="b"} 1`, even `m 1{} 2` as name "m 1"),
  and reads UTF-8 quoted names (`{"a.b"} 1`, `{__name__="x"} 1`, `# TYPE "a.b" gauge`).
- QUOTED_LABEL_NAME: `m{"a.b"="c"} 1`, the same UTF-8 syntax for label names.
- VALUELESS_LABEL: `m{a=,b="c"} 1`: prometheus_client skips a label whose value is
  missing altogether (not empty: `a=""` is fine in both).
- EMPTY_TERM: `m{a="", ,b=""} 1`: two commas with a blank between pass there as an
  empty term (two adjacent commas do not).
- CHARACTERS: outside label values, digits other than ASCII (int('\\u0661') == 1 in Python)
  or whitespace other than space and tab between tokens (prometheus_client strips any
  Unicode whitespace around a value, so `m 1\\x0c 2` passes there).
- NO_BLANK: a line that is one word and a number: prometheus_client reads `inf` as the
  sample "in" with value inf (the word less its last letter is the name).
- QUOTED_COMMENT: a quote before the HELP/TYPE word (`#" HELP 1m`): prometheus_client
  splits comments quote-aware, so it never sees the word; we read a HELP line there.
- TYPE_OVERRIDDEN: a TYPE line with an unknown type followed by another TYPE line for
  the same family: prometheus_client checks only the type in force when the family
  ends; we refuse each bad TYPE line as it comes (Go refuses both the bad type and the
  second TYPE line).

Nothing else may differ, and never the other way round (ours accepting what
prometheus_client refuses). The examples pinned with @example are the cases the
property found against the previous parser (float() on the value, splitlines(), a
loop that skipped any run of spaces and commas between labels).
"""

from __future__ import annotations

import math
import re

import pytest
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st
from hypothesis.control import currently_in_test_context
from prometheus_client.parser import text_string_to_metric_families

from node_agent.serving import exposition

# (family type or "", name, labels, value)
Parsed = list[tuple[str, str, dict[str, str], float]]

_TYPES = ["counter", "gauge", "histogram", "summary", "untyped", "unknown", "info"]
_TYPES += ["stateset", "gaugehistogram"]
_LEGACY_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_QUOTED = re.compile(r'"(?:[^"\\]|\\.)*"')


def theirs(text: str) -> Parsed | None:
    """prometheus_client's samples, or None where it refuses the text."""
    try:
        return [
            (f.type, s.name, dict(s.labels), float(s.value))
            for f in text_string_to_metric_families(text)
            for s in f.samples
        ]
    except Exception:  # it refuses with ValueError mostly, but any exception is a refusal
        return None


def ours(text: str) -> Parsed | exposition.ExpositionError:
    try:
        return [("", s.name, dict(s.labels), s.value) for s in exposition.parse(text)]
    except exposition.ExpositionError as err:
        return err


def _names_match(family_type: str, written: str, their_name: str) -> bool:
    # prometheus_client renames the samples of a counter family to end in _total
    # (OpenMetrics style) unless the family's TYPE name already ends so: `# TYPE foo
    # counter` + `foo 1` comes back as foo_total. Which case applied is not visible in its
    # output (both give family "foo"), so either reading of a counter sample passes.
    if family_type == "counter":
        return their_name in (written, written + "_total")
    return their_name == written


def _same(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or a == b


def deliberate(line: str) -> str | None:
    """Which documented class a line prometheus_client accepts and we refuse falls in."""
    bare = _QUOTED.sub('""', line.strip())  # label values (and quoted names) emptied
    if any(not c.isascii() and c.isdecimal() for c in bare):
        return "CHARACTERS"
    if any(c.isspace() and c not in " \t" for c in bare):
        return "CHARACTERS"
    if bare.startswith("#"):
        parts = line.split(None, 3)
        if len(parts) > 2 and parts[1] in ("HELP", "TYPE") and parts[2].startswith('"'):
            return "NAME"
        if '"' in "".join(parts[:2]):
            return "QUOTED_COMMENT"
        if len(parts) == 4 and parts[1] == "TYPE" and parts[3] not in _TYPES:
            return "TYPE_OVERRIDDEN"
        return None
    if bare.startswith("{"):
        return "NAME"
    if re.search(r'[{,][ \t]*""[ \t]*=', bare):
        return "QUOTED_LABEL_NAME"
    if re.search(r"=[ \t]*(?:[,}]|$)", bare):
        return "VALUELESS_LABEL"
    if re.search(r",[ \t]+,", bare):
        return "EMPTY_TERM"
    for _, name, labels, _ in theirs(line) or []:
        if not _LEGACY_NAME.fullmatch(name):
            return "NAME"
        if any(not _LEGACY_NAME.fullmatch(k) for k in labels):
            return "QUOTED_LABEL_NAME"
    if "{" not in bare and len(bare.split()) == 1:
        return "NO_BLANK"
    # prometheus_client ends the label set at the first '}' outside quotes.
    tokens = bare.partition("}")[2].split() if "{" in bare else bare.split()[1:]
    if len(tokens) > 2:
        return "EXTRA_TOKENS"
    return None


def _event(what: str) -> None:
    if currently_in_test_context():  # check_agrees also serves plain tests
        event(what)


def check_agrees(text: str) -> None:
    expected = theirs(text)
    got = ours(text)
    if expected is None:
        _event("refused by both")
        assert isinstance(got, exposition.ExpositionError), (
            f"prometheus_client refuses {text!r}, we accept it as {got}"
        )
        return
    if isinstance(got, exposition.ExpositionError):
        m = re.match(r"line (\d+)", str(got))
        assert m is not None, f"error without a line number: {got}"
        line = text.split("\n")[int(m.group(1)) - 1]
        why = deliberate(line)
        assert why is not None, (
            f"prometheus_client accepts {text!r} as {expected}, we refuse it: {got}"
        )
        _event(f"deliberately refused: {why}")
        return
    _event(
        "accepted by both"
        + (" (counter renamed)" if any(e[0] == "counter" for e in expected) else "")
    )
    assert len(got) == len(expected), (text, got, expected)
    for (_, name, labels, value), (ftype, t_name, t_labels, t_value) in zip(
        got, expected, strict=True
    ):
        assert _names_match(ftype, name, t_name), (text, got, expected)
        assert labels == t_labels, (text, got, expected)
        assert _same(value, t_value), (text, got, expected)


# --- generators ------------------------------------------------------------------------
# Each piece is valid most of the time and broken now and then (rarely()), so that about
# half the texts are accepted and the rest are refused for one reason or two.

_NAMES = st.sampled_from(
    ["m", "vllm:num_requests_running", "_x", "a:b_c", "foo_total", "h_bucket", "h_sum", "x1"]
)
_BAD_NAMES = st.sampled_from(["1m", "m-x", "a.b", "", "m x", "é"])
_LABEL_NAMES = st.sampled_from(["le", "engine", "model_name", "finished_reason", "_a", "A1", "a:b"])
_BAD_LABEL_NAMES = st.sampled_from(["__x", "__name__", "1a", "a-b", '"a.b"', "", "a b"])
_VALUE_CHARS = st.sampled_from([*'ab0 ,={}"\\#\n\r\t', "é", "\u2028", "\x0c", "\xa0"])
_GOOD_VALUES = st.sampled_from(
    [
        *("0", "1", "-1", "+1", "1.5", ".5", "5.", "1e5", "1E-3", "+1.5e+10", "00", "12.0"),
        *("NaN", "nan", "+Inf", "-Inf", "inf", "Infinity", "-infinity", "+nan", "iNf"),
    ]
)
_BAD_VALUES = st.sampled_from(
    [
        *("1_000", "0x10", "Infin", "1e", "1.2.3", "\u0661", "--1", "abc", "1,0", "NaNa"),
        *("0x1p3", "1p5", "in", "+", ".", "e5", "1e5.0", "\u0661\u0662", "\uff11", "1d", ""),
    ]
)
_BLANKS = st.sampled_from(["", " ", "\t", "  ", " \t "])


def rarely(draw: st.DrawFn, good: st.SearchStrategy[str], bad: st.SearchStrategy[str]) -> str:
    return draw(bad) if draw(st.integers(0, 24)) == 0 else draw(good)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


@st.composite
def label_value(draw: st.DrawFn) -> str:
    raw = draw(st.text(_VALUE_CHARS, max_size=8))
    how = rarely(draw, st.just("escaped"), st.sampled_from(["raw", "odd_escape", "unquoted"]))
    if how == "raw":  # fine unless raw holds a quote, a backslash or a newline
        return '"' + raw + '"'
    if how == "odd_escape":  # \t, \q, a trailing backslash: not among the three escapes
        return '"' + _escape(raw) + draw(st.sampled_from(["\\t", "\\q", "\\", "\\\\\\a"])) + '"'
    if how == "unquoted":
        return draw(st.sampled_from(["x", '"', "''", '"a"b"']))
    return '"' + _escape(raw) + '"'


@st.composite
def label_set(draw: st.DrawFn) -> str:
    terms = []
    for _ in range(draw(st.integers(0, 3))):
        name = rarely(draw, _LABEL_NAMES, _BAD_LABEL_NAMES)
        eq = rarely(
            draw, st.sampled_from(["=", "=", " = ", "\t="]), st.sampled_from(["==", ":", ""])
        )
        terms.append(name + eq + draw(label_value()))
    out = rarely(draw, st.sampled_from(["", "", ",", " "]), st.just(",,"))
    for i, term in enumerate(terms):
        if i:
            out += rarely(
                draw, st.sampled_from([",", ", ", " , ", ",\t"]), st.sampled_from([",,", " ", ""])
            )
        out += term
    out += rarely(draw, st.sampled_from(["", "", ",", " ", ", "]), st.just(",,"))
    return "{" + out + rarely(draw, st.just("}"), st.sampled_from(["", "}}", "{}"]))


@st.composite
def sample_line(draw: st.DrawFn, name: str | None = None) -> str:
    if name is None:
        name = rarely(draw, _NAMES, _BAD_NAMES)
    good_values = st.one_of(
        _GOOD_VALUES, st.floats().map(repr), st.integers(-(10**15), 10**15).map(str)
    )
    line = name
    if draw(st.booleans()):
        line += draw(_BLANKS) + draw(label_set()) + draw(_BLANKS)
    else:
        line += rarely(draw, st.sampled_from([" ", "\t", "  "]), st.just(""))
    line += rarely(draw, good_values, _BAD_VALUES)
    if draw(st.integers(0, 3)) == 0:
        timestamps = st.sampled_from(["1700000000000", "-5", "1.5", "NaN"])
        line += draw(_BLANKS.filter(bool)) + rarely(draw, timestamps, st.sampled_from(["x", "1_0"]))
    line += rarely(draw, st.just(""), st.sampled_from([" 2", " x", " #", " {}"]))  # extra token
    lead = draw(st.sampled_from(["", "", " ", "\t"]))
    trail = draw(st.sampled_from(["", "", " ", "\t", "\r", "\x0c", " \r"]))
    return lead + line + trail


@st.composite
def comment_line(draw: st.DrawFn, name: str | None = None, kind: str | None = None) -> str:
    if kind is None:
        kind = draw(st.sampled_from(["HELP", "TYPE", "free"]))
    if kind == "free":
        return draw(st.sampled_from(["#", "# free text", "#TYPE x", "## TYPE", "# EOF", "# HELP"]))
    if name is None:
        name = rarely(draw, _NAMES, st.one_of(_BAD_NAMES, st.just('"a.b"')))
    gap = draw(st.sampled_from([" ", " ", "  ", "\t"]))
    line = "#" + gap + kind + gap + name
    if kind == "HELP":
        return line + draw(st.sampled_from(["", " doc", " doc with \\n and \\\\", ' "q']))
    typ = rarely(
        draw,
        st.sampled_from(_TYPES),
        st.sampled_from(["Gauge", "weird", "gauge x", ""]),
    )
    return line + (gap + typ if typ else "")


@st.composite
def family(draw: st.DrawFn) -> list[str]:
    """HELP and TYPE, then samples of that family (counters and histograms named as such)."""
    name = draw(_NAMES)
    typ = draw(st.sampled_from(_TYPES))
    suffixes = {"histogram": ["_bucket", "_sum", "_count"], "summary": ["", "_sum", "_count"]}
    lines = [draw(comment_line(name, "HELP")), f"# TYPE {name} {typ}"]
    for _ in range(draw(st.integers(0, 3))):
        lines.append(draw(sample_line(name + draw(st.sampled_from(suffixes.get(typ, [""]))))))
    return lines


@st.composite
def exposition_text(draw: st.DrawFn) -> str:
    lines: list[str] = []
    for _ in range(draw(st.integers(0, 4))):
        lines += draw(
            st.one_of(
                family(),
                sample_line().map(lambda line: [line]),
                comment_line().map(lambda line: [line]),
                st.sampled_from(["", " ", "\t", "\r"]).map(lambda line: [line]),
            )
        )
    return "\n".join(lines) + draw(st.sampled_from(["", "\n", "\r\n"]))


@st.composite
def mutated_text(draw: st.DrawFn) -> str:
    """A generated text with a few characters inserted or deleted anywhere."""
    text = draw(exposition_text())
    for _ in range(draw(st.integers(1, 3))):
        at = draw(st.integers(0, len(text)))
        if text and draw(st.booleans()):
            text = text[:at] + text[at + 1 :]
        else:
            text = text[:at] + draw(st.sampled_from(list('{}",=\\ \t\n#_.e+-0'))) + text[at:]
    return text


_SETTINGS = settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@_SETTINGS
@given(exposition_text())
@example("m 1_000")
@example('m{a="b" c="d"} 1')
@example('m{a="b",a="c"} 1')
@example('m{a="b",,c="d"} 1')
@example('m{a="x\ry"} 1')
@example('m{a="x\u2028y"} 1')
@example('m {a="b"} 1')
@example('m{a="\\t"} 1')
@example("# TYPE m\nm 1")
@example("# HELP 1m doc")
@example("# TYPE m weird\nm 1")
@example("m 1 1.5")
def test_agrees_with_prometheus_client(text: str) -> None:
    check_agrees(text)


@_SETTINGS
@given(mutated_text())
def test_agrees_with_prometheus_client_on_mutated_texts(text: str) -> None:
    check_agrees(text)


@pytest.mark.parametrize(
    ("line", "why"),
    [
        ("m 1 x 2", "EXTRA_TOKENS"),
        ('m-x{a="b"} 1', "NAME"),
        ("m 1{} 2", "NAME"),
        ('{"a.b"} 1', "NAME"),
        ('{__name__="x"} 1', "NAME"),
        ('# TYPE "a.b" gauge', "NAME"),
        ('m{"a.b"="c"} 1', "QUOTED_LABEL_NAME"),
        ("m \u0661", "CHARACTERS"),
        ("m 1\x0c 2", "CHARACTERS"),
        ("# TYPE m weird\n# TYPE m gauge", "TYPE_OVERRIDDEN"),
        ('#" HELP 1m', "QUOTED_COMMENT"),
        ("inf", "NO_BLANK"),
        ('m{a=,b="c"} 1', "VALUELESS_LABEL"),
        ('m{a="", ,b=""} 1', "EMPTY_TERM"),
        ("m 0 } 2", "EXTRA_TOKENS"),
        ("m{}0 } 2", "EXTRA_TOKENS"),
    ],
)
def test_each_deliberate_difference_is_real(line: str, why: str) -> None:
    """Each documented class: prometheus_client accepts it, we refuse it, and why."""
    assert theirs(line) is not None
    assert isinstance(ours(line), exposition.ExpositionError)
    assert deliberate(line.split("\n")[0]) == why


@pytest.mark.parametrize(
    "text",
    [
        "m 1_000",  # float() accepts digit separators
        "m 0x10",
        "m Infin",
        'm{a="b" c="d"} 1',  # no comma between labels
        'm{a="b",,c="d"} 1',
        'm{a="b",a="c"} 1',  # duplicate label
        'm{__x="y"} 1',  # reserved label name
        "# TYPE m",
        "# TYPE m Gauge",
        "# HELP 1m",
        "m",
        "m1",
    ],
)
def test_refused_texts(text: str) -> None:
    assert theirs(text) is None
    with pytest.raises(exposition.ExpositionError, match="line 1"):
        exposition.parse(text)


def test_values_prometheus_writes_and_reads() -> None:
    text = "\n".join(
        ["a NaN", "b +Inf", "c -Inf", "d infinity", "e 1e-3", "f .5", "g 5.", "h -0", "i 12"]
    )
    values = [s.value for s in exposition.parse(text)]
    assert math.isnan(values[0])
    assert values[1:] == [math.inf, -math.inf, math.inf, 0.001, 0.5, 5.0, 0.0, 12.0]


def test_label_values_keep_any_character_but_newline() -> None:
    text = 'm{a="x\ry",b="p\u2028q",c="}{,=",d="say \\"hi\\"\\n",e="\\\\"} 1 1700000000000\r\n'
    (s,) = exposition.parse(text)
    assert dict(s.labels) == {
        "a": "x\ry",
        "b": "p\u2028q",
        "c": "}{,=",
        "d": 'say "hi"\n',
        "e": "\\",
    }
    assert s.value == 1.0
