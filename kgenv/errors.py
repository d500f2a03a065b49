"""The error tree: each class maps to one exit code and prints as one line."""


class KgenvError(Exception):
    """Base of every error kgenv reports to the user."""

    exit_code = 2


class UserError(KgenvError):
    """Bad input: a file, option or manifest that cannot be used."""


class ToolError(KgenvError):
    """An outside tool (engine, compiler, archive, QEMU) failed."""


class RefusedError(KgenvError):
    """A check said no: the result would not be safe."""

    exit_code = 1


def describe(exc: BaseException) -> str:
    """One line for an exception that is not a KgenvError: a file-system or value problem as such,
    anything else as an internal error (a bug)."""
    text = " ".join(f"{type(exc).__name__}: {exc}".split())
    return text if isinstance(exc, (OSError, ValueError)) else f"internal error: {text}"
