"""The windows the server has not yet said are stored: numbered, kept, sent again.

A window is measured once. It stays here from the moment it is measured until the
server says it is in the database (`Stored`, or `Welcome.stored_through_seq` after a
reconnect), so neither a server killed with SIGKILL (its writer's queue gone) nor a
dropped stream nor an outage loses one. Bounded: past `max_windows` the oldest go, and
are counted, so an outage longer than the buffer costs its oldest windows, never the
agent's memory.
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass

from agft.v1 import agent_pb2 as pb

log = logging.getLogger(__name__)


@dataclass(slots=True)
class Buffered:
    seq: int
    telemetry: pb.Telemetry
    session: int  # the stream it was measured in (sessions_started then)


class ResendBuffer:
    def __init__(self, max_windows: int) -> None:
        if max_windows < 1:
            raise ValueError(f"max_windows must be at least 1, got {max_windows}")
        self.max_windows = max_windows
        self._entries: deque[Buffered] = deque()
        self.last_seq = 0
        self.stored_through = 0
        self.dropped = 0  # windows pushed out unsent-as-stored by a full buffer

    def __len__(self) -> int:
        return len(self._entries)

    def add(self, telemetry: pb.Telemetry, session: int) -> int:
        """Number a freshly measured window and keep it; returns its seq."""
        self.last_seq += 1
        telemetry.window_seq = self.last_seq
        self._entries.append(Buffered(self.last_seq, telemetry, session))
        if len(self._entries) > self.max_windows:
            lost = self._entries.popleft()
            if self.dropped == 0 or self.dropped % 100 == 0:
                log.warning(
                    "re-send buffer full (%d windows): window %d will never reach the server"
                    " (%d so far)",
                    self.max_windows,
                    lost.seq,
                    self.dropped + 1,
                )
            self.dropped += 1
        return self.last_seq

    def stored(self, through_seq: int) -> None:
        """The server holds every window up to through_seq: forget them."""
        if through_seq > self.last_seq:
            # Not ours (a server's mix-up): dropping unsent windows on its word would
            # lose them.
            log.warning(
                "server says window %d is stored, but the newest measured is %d; ignored",
                through_seq,
                self.last_seq,
            )
            return
        self.stored_through = max(self.stored_through, through_seq)
        while self._entries and self._entries[0].seq <= through_seq:
            self._entries.popleft()

    def next_to_send(self, sent_through: int, session: int) -> tuple[int, pb.Telemetry] | None:
        """What a stream sends next, having sent through sent_through: the oldest window
        not stored, with its seq. One measured before this stream (session) began goes
        as a copy marked replayed: its moment passed, the server records it only."""
        entry = self.next_after(max(sent_through, self.stored_through))
        if entry is None:
            return None
        if entry.session == session:
            return entry.seq, entry.telemetry
        telemetry = pb.Telemetry()
        telemetry.CopyFrom(entry.telemetry)
        telemetry.replayed = True
        return entry.seq, telemetry

    def next_after(self, seq: int) -> Buffered | None:
        """The oldest kept window numbered above seq (None: none yet)."""
        for entry in self._entries:  # a short scan: only the unstored are kept
            if entry.seq > seq:
                return entry
        return None
