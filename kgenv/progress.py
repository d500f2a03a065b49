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
        self._write(f"\r\033[K{stamp} {message}\n" if self.live else f"{stamp} {message}\n")

    def tick(self, message: str) -> None:
        """Transient detail (download bytes, build output); shown only on a terminal."""
        if self.quiet or not self.live:
            return
        self._write(f"\r\033[K  {message[:120]}")

    def _write(self, text: str) -> None:
        """Progress is never the work: a closed reader (`| head`) silences it, the build goes on."""
        try:
            self.stream.write(text)
            self.stream.flush()
        except (BrokenPipeError, ValueError):  # ValueError: the stream was closed
            self.quiet = True


QUIET = Progress(quiet=True)
