"""Progress for long work: a live line on a terminal, plain lines in CI or with --json."""

import os
import sys
import time


class Progress:
    """Reports steps of long work on stderr; quiet=True silences everything."""

    def __init__(self, quiet: bool = False, stream=None):
        self.stream = stream or sys.stderr
        self.quiet = quiet
        self.live = self.stream.isatty() and os.environ.get("CI", "").lower() not in ("1", "true")
        self._t0 = time.monotonic()

    def step(self, message: str) -> None:
        """A new stage begins."""
        if self.quiet:
            return
        stamp = f"[{time.monotonic() - self._t0:6.1f}s]"
        if self.live:
            self.stream.write(f"\r\033[K{stamp} {message}\n")
        else:
            self.stream.write(f"{stamp} {message}\n")
        self.stream.flush()

    def tick(self, message: str) -> None:
        """Transient detail (download bytes, build output); shown only on a terminal."""
        if self.quiet or not self.live:
            return
        self.stream.write(f"\r\033[K  {message[:120]}")
        self.stream.flush()


QUIET = Progress(quiet=True)
