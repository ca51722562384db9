"""The clock commands a server message carries, in one place: alone (`set_clocks`,
`reset_clocks`) or several together (`Commands`). The agent applies them, the server
times them as they leave, the load test's agents answer them: all read them here."""

from __future__ import annotations

from agft.v1 import agent_pb2 as pb

Command = pb.SetClocks | pb.ResetClocks


def commands_of(message: pb.ServerMessage) -> list[Command]:
    """The message's commands in the order they are to be applied; [] if it has none."""
    kind = message.WhichOneof("body")
    if kind == "set_clocks":
        return [message.set_clocks]
    if kind == "reset_clocks":
        return [message.reset_clocks]
    if kind != "commands":
        return []
    found: list[Command] = []
    for command in message.commands.commands:
        which = command.WhichOneof("kind")
        if which == "set_clocks":
            found.append(command.set_clocks)
        elif which == "reset_clocks":
            found.append(command.reset_clocks)
    return found
