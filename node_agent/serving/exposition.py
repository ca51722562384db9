"""A small parser for the Prometheus text exposition format (what vLLM's /metrics serves)."""

from __future__ import annotations

import math
from dataclasses import dataclass


class ExpositionError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class Sample:
    name: str
    labels: tuple[tuple[str, str], ...]
    value: float

    def label(self, key: str) -> str | None:
        for k, v in self.labels:
            if k == key:
                return v
        return None


_ESCAPES = {"\\": "\\", '"': '"', "n": "\n"}


def _parse_labels(text: str, line_no: int) -> tuple[tuple[tuple[str, str], ...], int]:
    """Parse `{a="x",b="y"}` starting at text[0] == '{'; returns labels and the end index."""
    labels: list[tuple[str, str]] = []
    i = 1
    n = len(text)
    while True:
        while i < n and text[i] in " ,":
            i += 1
        if i < n and text[i] == "}":
            return tuple(labels), i + 1
        eq = text.find("=", i)
        if eq < 0 or eq + 1 >= n or text[eq + 1] != '"':
            raise ExpositionError(f"line {line_no}: malformed label set")
        key = text[i:eq].strip()
        i = eq + 2
        value_chars: list[str] = []
        while True:
            if i >= n:
                raise ExpositionError(f"line {line_no}: unterminated label value")
            ch = text[i]
            if ch == "\\" and i + 1 < n:
                value_chars.append(_ESCAPES.get(text[i + 1], text[i + 1]))
                i += 2
            elif ch == '"':
                i += 1
                break
            else:
                value_chars.append(ch)
                i += 1
        labels.append((key, "".join(value_chars)))


def parse_value(token: str, line_no: int) -> float:
    try:
        return float(token)  # accepts NaN, +Inf, -Inf as Prometheus writes them
    except ValueError:
        raise ExpositionError(f"line {line_no}: bad sample value {token!r}") from None


def parse(text: str) -> list[Sample]:
    samples: list[Sample] = []
    for line_no, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        brace = line.find("{")
        space = line.find(" ")
        if brace >= 0 and (space < 0 or brace < space):
            name = line[:brace]
            labels, end = _parse_labels(line[brace:], line_no)
            rest = line[brace + end :].split()
        else:
            parts = line.split()
            name, labels, rest = parts[0], (), parts[1:]
        if not name or not rest:
            raise ExpositionError(f"line {line_no}: no value in {raw!r}")
        samples.append(Sample(name, labels, parse_value(rest[0], line_no)))
    return samples


def finite(value: float) -> bool:
    return math.isfinite(value)
