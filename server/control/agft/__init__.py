"""`agft`: our clock controller (policy.py has the design). Split by job: tunables,
models (power and latency), budget (the relative latency budget), signals (what it reads
from a window) and policy (the decision, its safety rules and its saved state)."""

from server.control.agft.policy import STATE_VERSION, AgftPolicy
from server.control.agft.tunables import AgftTunables, tunables_from_text

__all__ = ["STATE_VERSION", "AgftPolicy", "AgftTunables", "tunables_from_text"]
