"""Forking a virtual-time simulated node: an independent copy that continues exactly alike.

Pickling round-trip instead of copy.deepcopy: the C pickler copies the engine's request
objects several times faster, which is what makes a per-window clairvoyant search over a
clock grid affordable. Three things need care:

* the node-wide RLock cannot be pickled; the fork gets a fresh one;
* the list of completed requests (up to 100 000 records) is history, not state: the fork
  starts with an empty one, so its records are exactly the requests it finished itself;
* arrival arrays (numpy) go out of band: the fork shares their memory read-only, while
  the stream position, and everything else, is the fork's own.
"""

from __future__ import annotations

import collections
import io
import pickle
import threading
from typing import Any

from sim.node import SimulatedNode

_RLOCK_TYPE = type(threading.RLock())


class _NodePickler(pickle.Pickler):
    def __init__(self, file: io.BytesIO, history_ids: set[int], buffers: list[Any]) -> None:
        super().__init__(file, protocol=5, buffer_callback=buffers.append)
        self._history_ids = history_ids

    def reducer_override(self, obj: Any) -> Any:
        if isinstance(obj, _RLOCK_TYPE):
            return threading.RLock, ()
        if isinstance(obj, collections.deque) and id(obj) in self._history_ids:
            return collections.deque, ((), obj.maxlen)
        return NotImplemented


class NodeImage:
    """A virtual-clock node pickled once at an instant, to fork from many times.

    oracle-plan's table forks every candidate clock from the same instant; pickling the
    node once and loading it once per candidate halves what a fork costs there."""

    def __init__(self, node: SimulatedNode) -> None:
        if node.realtime:
            raise ValueError("only a virtual-clock node can be forked")
        history = {id(inst.sim_engine.completed) for inst in node.instances}
        self._buffers: list[Any] = []
        out = io.BytesIO()
        with node.lock:
            _NodePickler(out, history, self._buffers).dump(node)
        self._data = out.getbuffer()

    def fork(self) -> SimulatedNode:
        """An independent copy of the node as it was when imaged."""
        fork = pickle.loads(self._data, buffers=self._buffers)
        if not isinstance(fork, SimulatedNode):
            raise TypeError(f"fork produced {type(fork).__name__}")
        return fork


def fork_node(node: SimulatedNode) -> SimulatedNode:
    """An independent copy of a virtual-clock node at its current instant.

    The fork has its own clock, GPUs, engines and arrival positions; advancing either one
    never changes the other. Its completed-request history starts empty.
    """
    return NodeImage(node).fork()
