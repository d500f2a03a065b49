"""The Docker Engine back-end, through the docker SDK."""

from __future__ import annotations

import os
import threading
import uuid
from collections.abc import Iterable, Sequence
from pathlib import Path

from kgenv.errors import ToolError
from kgenv.progress import Progress
from kgenv.runtime.base import Mount, RunResult, Runtime

START_HINT = "start one with 'dockerd &' as root (the README's commands install and start it)"

# Build containers (docs/build.md, "Build containers"): root in its own throwaway filesystem, but with
# no capabilities, no privilege gained through setuid files, bounded memory and processes.
MEMORY_LIMIT = 8 * 1024**3  # bytes, per container: make -j2 of kernel TUs peaks under 0.5 GB, one TU under 2 GB
PIDS_LIMIT = 1024  # processes and threads: make -j2 with gcc, as, objtool and shells peaks at ~25
# Root with no capabilities still owns the image's files and the job's work dirs (kgenv, as root,
# created them). A mount owned by another user (kgenv run by a docker-group user, a signing key of
# someone else) needs the file capabilities back: to read and write it (DAC_OVERRIDE) and for
# `cp -a` to keep its owner and mode in the tree (CHOWN, FOWNER).
FILE_CAPS = ["CHOWN", "DAC_OVERRIDE", "FOWNER"]
LABEL = "kgenv.pid"  # each build container names the kgenv process that started it

_live: set = set()  # containers of this process not yet removed (stop_all kills them)
_live_lock = threading.Lock()


def _limits() -> dict:
    """What every container kgenv starts is held to."""
    return {
        "security_opt": ["no-new-privileges"],
        "pids_limit": PIDS_LIMIT,
        "mem_limit": MEMORY_LIMIT,
        "memswap_limit": MEMORY_LIMIT,
    }


def hardening(mounts: Sequence[Mount]) -> dict:
    """The container options of a build run: every capability dropped but the file ones a
    foreign-owned mount needs, plus the limits. Network is decided by the caller."""
    foreign = False
    for m in mounts:
        try:
            foreign |= m.host.stat().st_uid != 0
        except OSError:
            pass  # the engine creates a missing mount source, as root
    caps = {"cap_drop": ["ALL"], "cap_add": FILE_CAPS if foreign else []}
    return {**caps, **_limits(), "labels": {LABEL: str(os.getpid())}}


def stop_all() -> None:
    """Kill every container this process started and has not removed yet (on SIGTERM or Ctrl-C the
    runs that own them see them end, and remove them as usual). Safe from any thread."""
    from docker.errors import DockerException

    with _live_lock:
        containers = list(_live)
    for c in containers:
        try:
            c.kill()
        except DockerException:
            pass  # already gone or stopping


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
        # apt and dpkg (users, owners, modes) need root's default capabilities here; the limits hold
        container = _create(self.client, image, command, **_limits())
        try:
            container.start()
            code = container.wait()["StatusCode"]
            output = container.logs().decode(errors="replace")
            result = RunResult(code, _oom_note(container, output) if code else output)
            return result, None if code else container.commit(repository=repo, tag=tag).id
        finally:
            _remove(container)

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
        container = _create(
            self.client,
            image,
            command,
            environment=env or {},
            working_dir=workdir,
            network_mode=None if network else "none",
            volumes={str(m.host): {"bind": m.target, "mode": "ro" if m.read_only else "rw"} for m in mounts},
            **hardening(mounts),
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
            output = _oom_note(container, "\n".join(lines)) if code else "\n".join(lines)
        finally:
            _remove(container)
        return RunResult(code, output)


def _create(client, image: str, command: list[str], **options):
    """Create a container, known to stop_all at once; one interrupted while being created is removed."""
    from docker.errors import DockerException

    name = f"kgenv-{os.getpid()}-{uuid.uuid4().hex[:12]}"
    try:
        container = client.containers.create(image, command, name=name, **options)
    except BaseException:
        try:
            client.api.remove_container(name, force=True)
        except DockerException:
            pass  # never created
        raise
    with _live_lock:
        _live.add(container)
    return container


def _remove(container) -> None:
    """Remove a container kgenv started (stop_all may be killing it at the same time)."""
    from docker.errors import APIError, NotFound

    try:
        container.remove(force=True)
    except NotFound:
        pass
    except APIError as e:
        if e.status_code != 409:  # 409: its removal is already in progress
            raise
    finally:
        with _live_lock:
            _live.discard(container)


def _oom_note(container, output: str) -> str:
    """The output, with a last line saying so when the container hit MEMORY_LIMIT."""
    container.reload()
    if container.attrs.get("State", {}).get("OOMKilled"):
        output += (
            f"\nkgenv: the container hit its memory limit ({MEMORY_LIMIT >> 20} MiB, kgenv.runtime.docker.MEMORY_LIMIT)"
        )
    return output


def runtime() -> Runtime:
    """The default back-end (typed as the contract, so mypy checks DockerRuntime against it)."""
    return DockerRuntime()
