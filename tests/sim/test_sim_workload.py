"""Arrivals: the Azure trace reader (2023 and 2024 timestamp formats, clear errors), replay
options, and the synthetic generators."""

from __future__ import annotations

import gzip
import math
from pathlib import Path

import numpy as np
import pytest

from sim.workload import (
    ArrivalStream,
    DiurnalWorkload,
    FixedLengths,
    GammaWorkload,
    LengthDistribution,
    PoissonWorkload,
    TraceFormatError,
    TraceWorkload,
    parse_timestamp,
    read_trace_csv,
    shipped_lengths_path,
    shipped_trace_path,
)

HEADER = "TIMESTAMP,ContextTokens,GeneratedTokens\n"


def _write(tmp_path: Path, body: str, name: str = "t.csv") -> Path:
    p = tmp_path / name
    p.write_text(HEADER + body)
    return p


def test_timestamp_formats() -> None:
    base = parse_timestamp("2024-05-12 00:00:00+00:00")
    assert base == 1715472000.0
    assert parse_timestamp("2024-05-12 00:00:00") == base  # naive = UTC
    assert parse_timestamp("2024-05-12T00:00:00Z") == base
    assert parse_timestamp("2024-05-12 00:00:01.250000+00:00") == base + 1.25
    assert parse_timestamp("2024-05-12 02:00:00+02:00") == base
    # 2023 format: seven fractional digits, kept to the last one.
    t = parse_timestamp("2023-11-16 18:17:03.9799600")
    assert t == pytest.approx(parse_timestamp("2023-11-16 18:17:03") + 0.97996, abs=1e-6)
    with pytest.raises(ValueError):
        parse_timestamp("16/11/2023 18:17")


def test_reads_2023_and_mixed_2024_traces(tmp_path: Path) -> None:
    p23 = _write(
        tmp_path, "2023-11-16 18:15:46.6805900,374,44\n2023-11-16 18:15:50.9951690,396,109\n"
    )
    rows = read_trace_csv(p23)
    assert rows.t.tolist() == pytest.approx([0.0, 4.314579])
    assert rows.prompt.tolist() == [374, 396] and rows.output.tolist() == [44, 109]
    p24 = _write(
        tmp_path,
        "2024-05-12 00:00:00+00:00,100,10\n2024-05-12 00:00:00.500000+00:00,200,0\n"
        "2024-05-12 00:00:02+00:00,300,30\n",
        "t24.csv",
    )
    rows = read_trace_csv(p24)
    assert rows.t.tolist() == [0.0, 0.5, 2.0]
    assert rows.output.tolist() == [10, 1, 30]  # vLLM needs max_tokens >= 1


@pytest.mark.parametrize(
    ("body", "line", "what"),
    [
        ("2023-11-16 18:15:46.6805900,374,44\nnot a time,1,2\n", 3, "bad timestamp"),
        ("2023-11-16 18:15:46.6805900,374,44\n2023-11-16 18:15:47,x,2\n", 3, "bad token count"),
        ("2023-11-16 18:15:46.6805900,374\n", 2, "expected 3 columns"),
        ("2023-11-16 18:15:46.6805900,-5,3\n", 2, "negative"),
    ],
)
def test_bad_rows_name_the_line(tmp_path: Path, body: str, line: int, what: str) -> None:
    p = _write(tmp_path, body)
    with pytest.raises(TraceFormatError, match=rf"t\.csv:{line}: {what}"):
        read_trace_csv(p)


def test_bad_header_and_empty_file(tmp_path: Path) -> None:
    p = tmp_path / "h.csv"
    p.write_text("time,in,out\n2023-11-16 18:15:46,1,1\n")
    with pytest.raises(TraceFormatError, match=r"h\.csv:1: header"):
        read_trace_csv(p)
    p.write_text("")
    with pytest.raises(TraceFormatError, match="empty"):
        read_trace_csv(p)


def test_shipped_trace_is_the_full_azure_conv_2023() -> None:
    rows = read_trace_csv(shipped_trace_path("azure_conv_2023"))
    assert len(rows.t) == 19_366
    assert 3400 < rows.span_s < 3600  # 58 minutes
    assert rows.prompt.mean() == pytest.approx(1155, rel=0.01)
    assert rows.output.mean() == pytest.approx(211, rel=0.01)
    with pytest.raises(FileNotFoundError):
        shipped_trace_path("nope")


def test_gzip_and_plain_read_the_same(tmp_path: Path) -> None:
    body = "2023-11-16 18:15:46.6805900,374,44\n2023-11-16 18:15:50.9951690,396,109\n"
    plain = _write(tmp_path, body)
    gz = tmp_path / "t.csv.gz"
    gz.write_bytes(gzip.compress((HEADER + body).encode()))
    assert read_trace_csv(plain).t.tolist() == read_trace_csv(gz).t.tolist()


def _all(streams: list[ArrivalStream], limit: int = 100_000) -> list[list[tuple[float, int, int]]]:
    out = []
    for s in streams:
        rows: list[tuple[float, int, int]] = []
        while s.next_t != math.inf and len(rows) < limit:
            rows.append(s.pop())
        out.append(rows)
    return out


def test_round_robin_split_covers_every_row_once() -> None:
    wl = TraceWorkload.shipped(loop=False, start_offset_s=0.0)
    parts = _all(wl.streams(3, seed=0))
    assert sum(len(p) for p in parts) == 19_366
    assert [len(p) for p in parts] == [6456, 6455, 6455]
    merged = sorted(r for p in parts for r in p)
    rows = wl.rows
    assert [r[0] for r in merged] == pytest.approx(rows.t.tolist())
    for p in parts:
        assert [r[0] for r in p] == sorted(r[0] for r in p)


def test_rate_and_time_scale() -> None:
    n = len(_all(TraceWorkload.shipped(loop=False, start_offset_s=0.0).streams(1, 0))[0])
    half = _all(TraceWorkload.shipped(rate_scale=0.5, loop=False, start_offset_s=0.0).streams(1, 0))
    double = _all(
        TraceWorkload.shipped(rate_scale=2.0, loop=False, start_offset_s=0.0).streams(1, 0)
    )
    assert len(half[0]) == pytest.approx(n / 2, rel=0.03)
    assert len(double[0]) == 2 * n
    slow = TraceWorkload.shipped(time_scale=2.0, loop=False, start_offset_s=0.0)
    last = _all(slow.streams(1, 0))[0][-1][0]
    assert last == pytest.approx(2 * slow.rows.span_s)


def test_loop_and_auto_start() -> None:
    wl = TraceWorkload.shipped()  # loop=True, start_offset_s="auto"
    assert 30 < wl.start_offset_s < 180  # past the trace's opening ramp
    (s,) = wl.streams(1, 0)
    first_pass = 19_366 - int(np.searchsorted(wl.rows.t, wl.start_offset_s))
    times = [s.pop()[0] for _ in range(first_pass + 10)]
    assert times == sorted(times)
    # The second pass starts one mean gap after the first pass's last row.
    gap = times[first_pass] - times[first_pass - 1]
    assert gap == pytest.approx(wl.mean_gap_s, rel=1e-6)
    assert s.next_t != math.inf


def test_poisson_rate_and_determinism() -> None:
    wl = PoissonWorkload(10.0, FixedLengths(100, 10), duration_s=600.0)
    a, b = wl.streams(2, seed=5)
    ta = [r[0] for r in _all([a])[0]]
    tb = [r[0] for r in _all([b])[0]]
    assert len(ta) == pytest.approx(3000, rel=0.06)  # 10/s split over two instances
    assert ta != tb
    again = _all(PoissonWorkload(10.0, FixedLengths(100, 10), duration_s=600.0).streams(2, 5))
    assert [r[0] for r in again[0]] == ta
    gaps = np.diff(ta)
    assert gaps.std() / gaps.mean() == pytest.approx(1.0, abs=0.1)


def test_gamma_is_bursty() -> None:
    wl = GammaWorkload(5.0, FixedLengths(100, 10), cv=3.0, duration_s=4000.0)
    (s,) = wl.streams(1, 0)
    gaps = np.diff([r[0] for r in _all([s])[0]])
    assert gaps.mean() == pytest.approx(0.2, rel=0.15)
    assert gaps.std() / gaps.mean() == pytest.approx(3.0, rel=0.2)


def test_diurnal_rate_follows_the_sine() -> None:
    wl = DiurnalWorkload(4.0, FixedLengths(100, 10), amplitude=0.8, period_s=1000.0,
                         duration_s=10_000.0)  # fmt: skip
    (s,) = wl.streams(1, 0)
    t = np.array([r[0] for r in _all([s])[0]])
    phase = (t % 1000.0) / 1000.0
    peak = np.sum((phase > 0.15) & (phase < 0.35))  # around sin = 1
    trough = np.sum((phase > 0.65) & (phase < 0.85))  # around sin = -1
    assert len(t) == pytest.approx(40_000, rel=0.05)
    assert peak / trough == pytest.approx((1 + 0.8 * 0.95) / (1 - 0.8 * 0.95), rel=0.25)


def test_length_file() -> None:
    lengths = LengthDistribution.shipped("sharegpt_v3_llama31")
    assert len(lengths) == 16_384
    assert lengths.mean_prompt_tokens == pytest.approx(219.6, rel=0.01)
    assert lengths.mean_output_tokens == pytest.approx(199.3, rel=0.01)
    assert shipped_lengths_path().name == "sharegpt_v3_llama31.csv"
    wl = PoissonWorkload(5.0, lengths, duration_s=100.0)
    rows = _all(wl.streams(1, 0))[0]
    assert len({r[1] for r in rows}) > 50


def test_bad_length_file_names_the_line(tmp_path: Path) -> None:
    p = tmp_path / "len.csv"
    p.write_text("num_prefill_tokens,num_decode_tokens\n10,20\n30,oops\n")
    with pytest.raises(TraceFormatError, match=r"len\.csv:3"):
        LengthDistribution.from_csv(p)
