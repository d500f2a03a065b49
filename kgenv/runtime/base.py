"""The runtime contract: what the stages ask of a back-end that runs commands in env images."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from kgenv.progress import Progress


@dataclass(frozen=True)
class Mount:
    host: Path
    target: str
    read_only: bool = True


@dataclass(frozen=True)
class RunResult:
    exit_code: int
    output: str


class Runtime(Protocol):
    """Every call a stage makes on a back-end (DockerRuntime, HostRuntime); images are named by ID.
    A back-end that cannot do one raises a one-line KgenvError saying so."""

    name: str

    def run(
        self,
        image: str,
        command: list[str],
        mounts: Sequence[Mount] = (),
        env: dict[str, str] | None = None,
        workdir: str = "/",
        network: bool = False,
        progress: Progress | None = None,
    ) -> RunResult:
        """Run command in a throwaway container of image (no network unless asked), output merged."""
        ...

    def image_id(self, ref: str) -> str | None:
        """The full ID of an image reference (ID or tag), or None when the back-end lacks it."""
        ...

    def load(self, archive: Path) -> str:
        """Load a docker-archive tar holding one image; its ID."""
        ...

    def load_archive(
        self, dest: Path, layers: list[Path], epoch: int, env: dict[str, str], labels: dict[str, str], workdir: str
    ) -> str:
        """Write a reproducible archive of the layers at dest, load it, return the image ID."""
        ...

    def tag(self, image_id: str, repo: str, tag: str) -> None: ...

    def remove(self, ref: str) -> None:
        """Remove an image; absent is fine."""
        ...

    def save(self, image_id: str, dest: Path) -> None:
        """Write the image as a docker-archive tar."""
        ...

    def save_chunks(self, image_id: str) -> Iterable[bytes]:
        """The image's docker-archive tar as a stream (for reading one layer without a copy)."""
        ...

    def size(self, image_id: str) -> int: ...

    def labels(self, image_id: str) -> dict[str, str]: ...

    def image_ids(self, repo: str) -> list[str]:
        """The IDs of the images tagged in repo."""
        ...

    def commit_run(self, image: str, command: list[str], repo: str, tag: str) -> tuple[RunResult, str | None]:
        """Run command in a container of image *with* network and, when it succeeds, keep the
        container as image repo:tag: (the run's result, the new image's ID or None)."""
        ...
