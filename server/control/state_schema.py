"""Strict readers for a controller's saved state (policy_states rows).

A state comes back from the database as JSON, written by an older build, edited by hand or
corrupted: every field is read through one of these, which accept exactly the type the
controller wrote (no bool for an int, no string for a number, no NaN or infinity) and
raise ValueError naming the field. A controller that restores a state either gets every
field right or changes nothing.
"""

from __future__ import annotations

import base64
import binascii
import math
from collections.abc import Iterable
from typing import Any

import numpy as np
from numpy.typing import NDArray

# A packed array: "f8:" and the base64 of its little-endian float64 bytes.
PACKED_PREFIX = "f8:"


def pack_floats(values: NDArray[np.float64] | Iterable[float]) -> str:
    """Floats (flattened) as one JSON string: exact, and cheap where a list is not.

    A warm agft state holds about 5,000 floats; as JSON numbers it took 1.3 ms to encode
    and 3.2 ms to read back (0.24 and 0.71 ms packed), every few seconds for every
    instance, on the thread the event loop shares the GIL with (docs/LOADTEST.md, "What a
    window costs")."""
    if isinstance(values, np.ndarray):
        array = np.ascontiguousarray(values, dtype="<f8")
    else:  # a deque of a reference: fromiter is a third cheaper than asarray
        array = np.fromiter(values, dtype="<f8")
    data = array.tobytes()
    return PACKED_PREFIX + base64.b64encode(data).decode("ascii")


class StateReader:
    """Reads the fields of one controller's state; errors start with `owner`."""

    def __init__(self, owner: str) -> None:
        self.owner = owner

    def fail(self, name: str, what: str) -> ValueError:
        return ValueError(f"{self.owner}: {name} {what}")

    def mapping(
        self, value: Any, name: str, keys: set[str] | frozenset[str] | None = None
    ) -> dict[str, Any]:
        """A JSON object; with keys, exactly those (a missing field is not a null one)."""
        if not isinstance(value, dict):
            raise self.fail(name, "must be a mapping")
        if keys is not None and set(value) != set(keys):
            missing, extra = sorted(set(keys) - set(value)), sorted(set(value) - set(keys))
            parts = ([f"lacks {', '.join(missing)}"] if missing else []) + (
                [f"has unknown {', '.join(map(str, extra))}"] if extra else []
            )
            raise self.fail(name, " and ".join(parts))
        return value

    def version(self, state: dict[str, Any]) -> int | None:
        """The state's version; None unless an integer (True is not version 1)."""
        value = state.get("version")
        return value if isinstance(value, int) and not isinstance(value, bool) else None

    def number(self, value: Any, name: str) -> float:
        """A finite number (an int is accepted: JSON writes 1.0 as 1 in some encoders)."""
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.fail(name, f"must be a finite number, not {value!r}")
        if not math.isfinite(value):
            raise self.fail(name, f"must be a finite number, not {value!r}")
        if isinstance(value, int) and float(value) != value:
            # An integer no float holds exactly would not come back as it was written.
            raise self.fail(name, f"must be a number a float holds exactly, not {value}")
        return float(value)

    def bounded(self, value: Any, name: str, low: float, high: float) -> float:
        number = self.number(value, name)
        if not low <= number <= high:
            raise self.fail(name, f"must be in [{low:g}, {high:g}], not {number:g}")
        return number

    def positive(self, value: Any, name: str) -> float:
        number = self.number(value, name)
        if number <= 0:
            raise self.fail(name, f"must be above 0, not {number:g}")
        return number

    def optional_number(self, value: Any, name: str) -> float | None:
        return None if value is None else self.number(value, name)

    def integer(self, value: Any, name: str) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.fail(name, f"must be an integer, not {value!r}")
        return value

    def size(self, value: Any, name: str) -> int:
        """An integer of at least 1 (a dimension)."""
        number = self.integer(value, name)
        if number < 1:
            raise self.fail(name, f"must be at least 1, not {number}")
        return number

    def count(self, value: Any, name: str) -> int:
        number = self.integer(value, name)
        if number < 0:
            raise self.fail(name, f"must be an integer >= 0, not {number}")
        return number

    def optional_integer(self, value: Any, name: str) -> int | None:
        return None if value is None else self.integer(value, name)

    def boolean(self, value: Any, name: str) -> bool:
        if not isinstance(value, bool):
            raise self.fail(name, f"must be true or false, not {value!r}")
        return value

    def integers(self, value: Any, name: str) -> list[int]:
        if not isinstance(value, list):
            raise self.fail(name, "must be a list")
        return [self.integer(v, f"{name}[{i}]") for i, v in enumerate(value)]

    def numbers(self, value: Any, name: str, length: int | None = None) -> list[float]:
        if not isinstance(value, list):
            raise self.fail(name, "must be a list")
        if length is not None and len(value) != length:
            raise self.fail(name, f"must have {length} items, not {len(value)}")
        return [self.number(v, f"{name}[{i}]") for i, v in enumerate(value)]

    def floats(self, value: Any, name: str, length: int | None = None) -> NDArray[np.float64]:
        """Finite numbers, packed by pack_floats or (as older builds wrote them) a list."""
        if not isinstance(value, str):
            return np.array(self.numbers(value, name, length), dtype=np.float64)
        values = self._unpack(value, name)
        if length is not None and len(values) != length:
            raise self.fail(name, f"must have {length} items, not {len(values)}")
        return values

    def _unpack(self, value: str, name: str) -> NDArray[np.float64]:
        if not value.startswith(PACKED_PREFIX):
            raise self.fail(name, f"must be a list or {PACKED_PREFIX}-packed floats")
        text = value[len(PACKED_PREFIX) :]
        try:
            raw = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            raise self.fail(name, "is not valid base64") from None
        # Only the one spelling pack_floats writes: a state read back must be the state
        # that was saved, byte for byte.
        if len(raw) % 8 or base64.b64encode(raw).decode("ascii") != text:
            raise self.fail(name, "is not packed float64 as pack_floats writes it")
        values = np.frombuffer(raw, dtype="<f8").astype(np.float64)  # a writable copy
        if not np.all(np.isfinite(values)):
            raise self.fail(name, "must hold finite numbers only")
        return values

    def array(self, value: Any, name: str, shape: tuple[int, ...]) -> NDArray[np.float64]:
        """Finite numbers of exactly this shape: packed by pack_floats (row-major), or
        nested lists (numpy alone would take strings of digits and booleans)."""
        if isinstance(value, str):
            return self.floats(value, name, length=math.prod(shape)).reshape(shape)

        def walk(item: Any, depth: int, where: str) -> Any:
            if depth == len(shape):
                return self.number(item, where)
            if not isinstance(item, list) or len(item) != shape[depth]:
                raise self.fail(where, f"must be a list of {shape[depth]} items")
            return [walk(x, depth + 1, f"{where}[{i}]") for i, x in enumerate(item)]

        return np.array(walk(value, 0, name), dtype=np.float64).reshape(shape)
