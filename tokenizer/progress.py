"""Progress lines on stderr: percent of input bytes, docs/s, tokens/s, ETA."""

import sys
import time


def _human(count: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if count >= scale:
            return f"{count / scale:.2f}{unit}"
    return f"{count:.0f}"


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class Progress:
    """Rate-limited reporter: redraws one line on a terminal, prints a line every few s otherwise."""

    def __init__(self, label: str, total_bytes: int, enabled: bool = True, stream=None):
        self.label = label
        self.total_bytes = max(total_bytes, 1)
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.tty = getattr(self.stream, "isatty", lambda: False)()
        self.interval = 0.5 if self.tty else 5.0
        self.start = time.perf_counter()
        self._last = self.start
        self._drawn = False

    def update(self, documents: int, tokens: int, bytes_read: int, force: bool = False) -> None:
        now = time.perf_counter()
        if not self.enabled or (not force and now - self._last < self.interval):
            return
        self._last = now
        elapsed = max(now - self.start, 1e-9)
        fraction = min(bytes_read / self.total_bytes, 1.0)
        eta = elapsed * (1 - fraction) / fraction if fraction > 0 else float("nan")
        line = (
            f"{self.label}: {100 * fraction:5.1f}% | {documents:,} docs {_human(tokens)} tokens | "
            f"{_human(documents / elapsed)} docs/s {_human(tokens / elapsed)} tokens/s | "
            f"ETA {_clock(eta) if eta == eta else '?'}"
        )
        self.stream.write(("\r" + line + "\x1b[K") if self.tty else line + "\n")
        self.stream.flush()
        self._drawn = True

    def close(self) -> None:
        if self.enabled and self.tty and self._drawn:
            self.stream.write("\n")
            self.stream.flush()
