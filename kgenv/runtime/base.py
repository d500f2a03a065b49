"""The runtime contract: run a command in an env image with mounts and no network."""

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Mount:
    host: Path
    target: str
    read_only: bool = True


@dataclass(frozen=True)
class RunResult:
    exit_code: int
    output: str


class Runtime:
    """Back-ends override run(); images are named by ID."""

    name = "base"

    def run(self, image: str, command: list[str], mounts: list[Mount] = (), env: dict | None = None,
            workdir: str = "/", network: bool = False, progress=None) -> RunResult:
        raise NotImplementedError
