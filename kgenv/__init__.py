"""kgenv: rebuild live kernel patches in the toolchain that built the running kernel."""

__version__ = "0.1.0"
