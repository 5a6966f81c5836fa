"""A one-line progress bar on stderr for the commands that read or refit long runs."""

from __future__ import annotations

import sys

__all__ = ["Progress"]


class Progress:
    """``label [#####    ]  40%`` on stderr, redrawn in place; shown only when stderr is a terminal.

    ``advance(n)`` adds ``n`` of ``total`` units done; ``close()`` ends the line. ``enabled`` forces it on or off.
    """

    def __init__(self, total: int, label: str, enabled: bool | None = None) -> None:
        self.total = max(int(total), 1)
        self.label = label
        self.done = 0
        self.enabled = sys.stderr.isatty() if enabled is None else enabled
        self._last_pct = -1

    def advance(self, amount: int) -> None:
        self.done += amount
        if not self.enabled:
            return
        pct = min(100, int(100 * self.done / self.total))
        if pct != self._last_pct:
            self._last_pct = pct
            bar = "#" * (pct // 4)
            sys.stderr.write(f"\r{self.label} [{bar:<25}] {pct:3d}%")
            sys.stderr.flush()

    def close(self) -> None:
        if self.enabled and self._last_pct >= 0:
            sys.stderr.write("\n")
            sys.stderr.flush()
