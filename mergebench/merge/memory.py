"""Peak resident memory of this process, per merge.

``getrusage().ru_maxrss`` is a lifetime maximum (and Linux carries it across fork and exec from the
parent), so it cannot tell one merge from the next in a long-lived process. On Linux, writing ``5`` to
``/proc/self/clear_refs`` resets the kernel's high-water mark (``VmHWM``), which is then read back.
"""

from __future__ import annotations

import resource
from pathlib import Path

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def reset_peak_rss() -> bool:
    """Start a new peak measurement; ``False`` where the OS does not support it (peaks are then lifetime)."""
    try:
        _CLEAR_REFS.write_text("5")
        return True
    except OSError:
        return False


def peak_rss_bytes() -> int:
    """Peak RSS since the last :func:`reset_peak_rss` (Linux), else since the process started."""
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
