"""The agent's re-send buffer: numbered in order, forgotten only when stored, bounded."""

from __future__ import annotations

import pytest

from agft.v1 import agent_pb2 as pb
from node_agent.resend import ResendBuffer


def _window(start: float) -> pb.Telemetry:
    return pb.Telemetry(windows=[pb.InstanceWindow(instance="vllm-0", window_start_s=start)])


def test_windows_are_numbered_and_kept_until_stored() -> None:
    buffer = ResendBuffer(10)
    seqs = [buffer.add(_window(float(i)), session=1) for i in range(4)]
    assert seqs == [1, 2, 3, 4]
    first = buffer.next_after(0)
    assert first is not None and first.seq == 1 and first.telemetry.window_seq == 1
    buffer.stored(2)
    assert len(buffer) == 2 and buffer.stored_through == 2
    after = buffer.next_after(buffer.stored_through)
    assert after is not None and after.seq == 3
    assert buffer.next_after(4) is None
    buffer.stored(1)  # an older word changes nothing
    assert buffer.stored_through == 2 and len(buffer) == 2


def test_a_stored_mark_beyond_what_was_measured_is_ignored() -> None:
    buffer = ResendBuffer(10)
    buffer.add(_window(0.0), session=1)
    buffer.stored(5)  # not this boot's numbering: dropping on its word would lose windows
    assert len(buffer) == 1 and buffer.stored_through == 0


def test_a_full_buffer_drops_its_oldest_and_counts_them() -> None:
    buffer = ResendBuffer(3)
    for i in range(5):
        buffer.add(_window(float(i)), session=1)
    assert len(buffer) == 3 and buffer.dropped == 2
    oldest = buffer.next_after(0)
    assert oldest is not None and oldest.seq == 3


def test_a_buffer_holds_at_least_one_window() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        ResendBuffer(0)


def test_a_window_measured_before_this_stream_goes_as_a_replayed_copy() -> None:
    buffer = ResendBuffer(10)
    buffer.add(_window(0.0), session=1)  # measured during stream 1
    buffer.add(_window(1.0), session=2)  # measured during stream 2, the one sending
    first = buffer.next_to_send(0, session=2)
    assert first is not None
    seq, telemetry = first
    assert (seq, telemetry.replayed) == (1, True)
    kept = buffer.next_after(0)
    assert kept is not None and not kept.telemetry.replayed  # the copy is marked, not it
    second = buffer.next_to_send(seq, session=2)
    assert second is not None and second[0] == 2 and not second[1].replayed
    assert buffer.next_to_send(2, session=2) is None
    buffer.stored(1)
    again = buffer.next_to_send(0, session=3)  # a new stream starts past what is stored
    assert again is not None and again[0] == 2 and again[1].replayed
