"""The Docker Engine back-end, through the docker SDK."""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path

from kgenv.errors import ToolError
from kgenv.progress import Progress
from kgenv.runtime.base import Mount, RunResult, Runtime

START_HINT = "start one with 'dockerd &' as root (the README's commands install and start it)"


def client():
    """A docker client that answers, or a one-line error saying how to start the engine."""
    import docker
    from docker.errors import DockerException

    try:
        c = docker.from_env(timeout=600)
        c.ping()
        return c
    except DockerException as e:
        host = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
        raise ToolError(f"{host}: no Docker engine answers ({type(e).__name__}); {START_HINT}") from None


class DockerRuntime:
    """The Runtime contract (kgenv.runtime.base) on a Docker Engine."""

    name = "docker"

    def __init__(self) -> None:
        self.client = client()

    def image_id(self, ref: str) -> str | None:
        """The full ID of an image reference, or None when the engine does not have it."""
        from docker.errors import ImageNotFound

        try:
            return self.client.images.get(ref).id
        except ImageNotFound:
            return None

    def load(self, archive: Path) -> str:
        """docker load of a docker-archive tar; the ID of the (single) image in it."""
        from docker.errors import APIError

        try:
            with open(archive, "rb") as f:
                images = self.client.images.load(f)
        except APIError as e:
            raise ToolError(f"{archive}: docker load failed: {e.explanation}") from None
        if len(images) != 1:
            raise ToolError(f"{archive}: expected one image, got {len(images)}")
        return images[0].id

    def load_archive(
        self, dest: Path, layers: list[Path], epoch: int, env: dict[str, str], labels: dict[str, str], workdir: str
    ) -> str:
        """Write a reproducible docker-archive of the layers, load it, return the image ID."""
        from kgenv.runtime import dockerarchive

        want = dockerarchive.write(dest, layers, epoch, env, labels, workdir)
        got = self.load(dest)
        dest.unlink()
        if got != want:
            raise ToolError(f"{dest}: engine loaded {got[:19]}, expected {want[:19]}")
        return got

    def tag(self, image_id: str, repo: str, tag: str) -> None:
        self.client.images.get(image_id).tag(repo, tag)

    def remove(self, ref: str) -> None:
        from docker.errors import ImageNotFound

        try:
            self.client.images.remove(ref, force=True)
        except ImageNotFound:
            pass

    def save(self, image_id: str, dest: Path) -> None:
        with open(dest, "wb") as f:
            for chunk in self.save_chunks(image_id):
                f.write(chunk)

    def save_chunks(self, image_id: str) -> Iterable[bytes]:
        return self.client.images.get(image_id).save(named=False)

    def size(self, image_id: str) -> int:
        return int(self.client.images.get(image_id).attrs.get("Size", 0))

    def labels(self, image_id: str) -> dict[str, str]:
        return dict(self.client.images.get(image_id).attrs.get("Config", {}).get("Labels") or {})

    def image_ids(self, repo: str) -> list[str]:
        return [image.id for image in self.client.images.list(name=repo)]

    def commit_run(self, image: str, command: list[str], repo: str, tag: str) -> tuple[RunResult, str | None]:
        container = self.client.containers.create(image, command)
        try:
            container.start()
            code = container.wait()["StatusCode"]
            result = RunResult(code, container.logs().decode(errors="replace"))
            return result, None if code else container.commit(repository=repo, tag=tag).id
        finally:
            container.remove(force=True)

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
        container = self.client.containers.create(
            image,
            command,
            environment=env or {},
            working_dir=workdir,
            network_mode=None if network else "none",
            volumes={str(m.host): {"bind": m.target, "mode": "ro" if m.read_only else "rw"} for m in mounts},
        )
        lines = []
        try:
            container.start()
            for chunk in container.logs(stream=True, follow=True):
                for line in chunk.decode(errors="replace").splitlines():
                    lines.append(line)
                    if progress:
                        progress.tick(line)
            code = container.wait()["StatusCode"]
        finally:
            container.remove(force=True)
        return RunResult(code, "\n".join(lines))


def runtime() -> Runtime:
    """The default back-end (typed as the contract, so mypy checks DockerRuntime against it)."""
    return DockerRuntime()
