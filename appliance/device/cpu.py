"""System CPU load from /proc/stat, for the status hub's `device` section."""

from __future__ import annotations

from pathlib import Path


class CpuLoad:
    """Share of all cores busy since the previous call, in percent (None the first time)."""

    def __init__(self, stat: Path = Path("/proc/stat")):
        self.stat = stat
        self._last: tuple[int, int] | None = None

    def sample(self) -> float | None:
        try:
            fields = [int(v) for v in self.stat.read_text().split("\n", 1)[0].split()[1:]]
        except (OSError, ValueError):
            return None
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
        total = sum(fields[:8])  # guest time is already counted in user
        last, self._last = self._last, (idle, total)
        if last is None or total <= last[1]:
            return None
        return round(100 * (1 - (idle - last[0]) / (total - last[1])), 1)
