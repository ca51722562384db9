"""The serving engines AGFT knows, in one place: config name <-> wire enum.

Both sides of the contract import this (the agent to fill Hello, the server to store
it), so an engine is added here once and nowhere else.
"""

from __future__ import annotations

from agft.v1 import agent_pb2 as pb

# Config / database name -> the enum on the wire.
ENGINE_BY_NAME: dict[str, pb.Engine.ValueType] = {
    "vllm": pb.ENGINE_VLLM,
    "sglang": pb.ENGINE_SGLANG,
}
NAME_BY_ENGINE: dict[pb.Engine.ValueType, str] = {
    wire: name for name, wire in ENGINE_BY_NAME.items()
}
ENGINE_NAMES: tuple[str, ...] = tuple(ENGINE_BY_NAME)
UNKNOWN_ENGINE = "unknown"


def engine_to_wire(name: str) -> pb.Engine.ValueType:
    """The wire enum of a configured engine name; ValueError names the known ones."""
    try:
        return ENGINE_BY_NAME[name]
    except KeyError:
        raise ValueError(f"unknown serving engine {name!r}; known: {list(ENGINE_NAMES)}") from None


def engine_from_wire(value: pb.Engine.ValueType) -> str:
    return NAME_BY_ENGINE.get(value, UNKNOWN_ENGINE)
