"""The runtime contract: run a command in an env image with mounts and no network."""

from dataclasses import dataclass, field
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


@dataclass
class Runtime:
    """Back-ends override run(); images are named by ID."""

    name: str = "base"
    extra: dict = field(default_factory=dict)

    def run(self, image: str, command: list[str], mounts: list[Mount] = (), env: dict | None = None,
            workdir: str = "/", network: bool = False, progress=None) -> RunResult:
        raise NotImplementedError
