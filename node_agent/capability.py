"""Can the agent lock this GPU's clocks? If not, why not, in words an operator can act on.

A GPU the agent cannot control is *monitor-only*: it is still measured and reported, but
no clock command is ever sent to it. The reason travels to the server in Hello
(Gpu.monitor_only_reason) and, when it changes later, in a ControlStatus message.

Detection changes no clock beyond what the agent does at start anyway: resetting a GPU's
SM clock lock (a lock found at start is not ours) needs the same privilege as setting
one, so that reset is the permission probe. No trial lock is ever applied.
"""

from __future__ import annotations

from node_agent.gpu.base import (
    GpuBackend,
    GpuError,
    GpuNotSupportedError,
    GpuPermissionError,
    GpuUnavailableError,
)

MIG_ENABLED = "MIG mode is enabled: MIG devices are monitor-only"
NOT_SUPPORTED = "clock locks are not supported on this GPU/driver"
NO_PERMISSION = "no permission to lock clocks: the agent needs CAP_SYS_ADMIN (or root)"


def reason_for_error(err: GpuError) -> str | None:
    """The monitor-only reason a failed lock or reset implies, or None if it may be transient.

    A bad argument or an unclassified driver error says nothing about the GPU's
    controllability, so it does not make the GPU monitor-only.
    """
    if isinstance(err, GpuPermissionError):
        return NO_PERMISSION
    if isinstance(err, GpuNotSupportedError):
        return NOT_SUPPORTED
    if isinstance(err, GpuUnavailableError):
        return f"GPU unavailable: {err}"
    return None


def monitor_only_reason(backend: GpuBackend, index: int) -> str:
    """ "" when the agent can lock GPU `index`'s clocks, else a short reason why not.

    Side effect: resets the GPU's SM clock lock to default (as the agent does at start).
    """
    try:
        if backend.mig_enabled(index):
            return MIG_ENABLED
    except GpuUnavailableError as err:
        return f"GPU unavailable: {err}"
    except GpuError:
        pass  # no answer about MIG is no MIG: the reset below still probes the rest
    try:
        backend.reset_locked_sm_clocks(index)
    except GpuError as err:
        # Any other failure still means a lock we set could not be undone when its
        # lease runs out, so setting one would be unsafe.
        return reason_for_error(err) or f"resetting clocks failed ({type(err).__name__}: {err})"
    return ""
