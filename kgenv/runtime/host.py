"""The host back-end: run stages directly on a machine that *is* the env (an OBS/Koji build root, a pod).

Only after the machine's toolchain fingerprint equals the manifest's exactly: the pinned toolchain
package versions, the compiler's version string, the .comment a probe object gets, the binutils and
pahole versions, and the prepared tree's config. Otherwise it refuses, listing every difference.

Containers give each run a private copy-on-write tree and bind mounts. Here, without privileges:
- a mount target becomes a symlink in a per-run directory, and the command, its environment and
  working directory name that directory instead (the shortest prefix of the target that does not
  exist on the host is rewritten, e.g. /kgenv-out or /run/kgenv-sign);
- runs are serialised, and after each one the env's tree is put back as it was: new files are
  removed, the O= tree (which every make run partly rewrites) is restored from a copy taken once,
  and source files a run overwrote from one of its mounts (a patched source copied over the tree)
  from a copy taken before the run. Any other change to the tree is an error, never silent.
- there is no network isolation: build roots are offline by themselves.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import subprocess
import tempfile
import threading
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import NoReturn

from kgenv.errors import RefusedError, ToolError, UserError
from kgenv.fsutil import sha256_file
from kgenv.manifest import Manifest
from kgenv.progress import Progress
from kgenv.runtime.base import Mount, RunResult

PROBE = "int kgenv_probe(int x) { return x + 1; }\n"


class HostRuntime:
    """The Runtime contract (kgenv.runtime.base) on this machine, for the env's image only."""

    name = "host"

    def __init__(self, m: Manifest, check: bool = True):
        self.m = m
        self.tree = Path(m.kernel.srctree)
        if check:
            differences = fingerprint_differences(m)
            if differences:
                raise RefusedError(f"this host is not env {m.name}'s build root: " + "; ".join(differences))
        self._lock = threading.Lock()
        self._index = tree_index(self.tree)
        # Every make run rewrites parts of the O= tree (its Makefile, host tools): keep it whole (~30 MB).
        self.objtree = os.path.normpath(m.kernel.objtree or ".")
        self._pristine = tempfile.TemporaryDirectory(prefix="kgenv-host-objtree-")
        shutil.copytree(self.tree / self.objtree, Path(self._pristine.name) / "obj", symlinks=True)

    def image_id(self, ref: str) -> str | None:
        """The host stands for the env's image and no other."""
        return self.m.image.id if ref in (self.m.image.id, self.m.image.tag) else None

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
        if self.image_id(image) is None:
            raise UserError(f"host runtime: runs env {self.m.name}'s image only, not {image[:19]}")
        with self._lock, tempfile.TemporaryDirectory(prefix="kgenv-host-") as tmp:
            root = Path(tmp)
            rewrite = mount_links(root / "root", mounts)
            saved = self._save(root / "saved", mounts)
            argv = [rewrite(a) for a in command]
            full_env = {**os.environ, **{k: rewrite(v) for k, v in (env or {}).items()}}
            try:
                r = _run(argv, full_env, rewrite(workdir), progress)
            finally:
                self._restore(saved)
        return r

    # -- what only an image store can do ----------------------------------------------------

    def _cannot(self, what: str) -> NoReturn:
        raise UserError(
            f"host runtime: cannot {what}: this machine is env {self.m.name}'s build root, "
            "not an image store (use --runtime docker)"
        )

    def load(self, archive: Path) -> str:
        self._cannot(f"load {archive}")

    def load_archive(
        self, dest: Path, layers: list[Path], epoch: int, env: dict[str, str], labels: dict[str, str], workdir: str
    ) -> str:
        self._cannot("load an image")

    def tag(self, image_id: str, repo: str, tag: str) -> None:
        self._cannot(f"tag an image {repo}:{tag}")

    def remove(self, ref: str) -> None:
        self._cannot(f"remove image {ref[:19]}")

    def save(self, image_id: str, dest: Path) -> None:
        self._cannot(f"save image {image_id[:19]}")

    def save_chunks(self, image_id: str) -> Iterable[bytes]:
        self._cannot(f"save image {image_id[:19]}")

    def size(self, image_id: str) -> int:
        self._cannot(f"measure image {image_id[:19]}")

    def labels(self, image_id: str) -> dict[str, str]:
        self._cannot(f"read the labels of image {image_id[:19]}")

    def image_ids(self, repo: str) -> list[str]:
        self._cannot(f"list images of {repo}")

    def commit_run(self, image: str, command: list[str], repo: str, tag: str) -> tuple[RunResult, str | None]:
        self._cannot(f"derive image {repo}:{tag}")

    # -- the tree as it was ------------------------------------------------------------------

    def _save(self, dest: Path, mounts: Sequence[Mount]) -> dict[str, Path]:
        """Copies of the tree files a run may overwrite with a mount's files (same relative path)."""
        saved = {}
        for mnt in mounts:
            if not Path(mnt.host).is_dir():
                continue
            for f in Path(mnt.host).rglob("*"):
                rel = str(f.relative_to(mnt.host))
                if rel in self._index and self._index[rel][0] != "d" and rel not in saved:
                    saved[rel] = dest / rel
                    saved[rel].parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(self.tree / rel, saved[rel], follow_symlinks=False)
        return saved

    def _restore(self, saved: dict[str, Path]) -> None:
        now = tree_index(self.tree)
        for rel in sorted(set(now) - set(self._index), reverse=True):
            p = self.tree / rel
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
        broken = []
        for rel, stat in self._index.items():
            if now.get(rel) == stat:
                continue
            copy = saved.get(rel) or self._pristine_copy(rel)
            if copy is not None and stat[0] != "d":
                _replace(copy, self.tree / rel)
            elif stat[0] != "d":
                broken.append(rel)
        if broken:
            raise ToolError(
                f"host runtime: a run changed the env tree {self.tree} in ways it cannot undo: "
                + ", ".join(broken[:8])
                + (" ..." if len(broken) > 8 else "")
            )

    def _pristine_copy(self, rel: str) -> Path | None:
        if self.objtree == "." or not (rel + "/").startswith(self.objtree + "/"):
            return None
        return Path(self._pristine.name) / "obj" / os.path.relpath(rel, self.objtree)


def _replace(copy: Path, target: Path) -> None:
    if target.is_dir() and not target.is_symlink():
        shutil.rmtree(target)
    elif target.exists() or target.is_symlink():
        target.unlink()
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(copy, target, follow_symlinks=False)


def tree_index(tree: Path) -> dict[str, tuple]:
    """Every entry under the tree: relative path -> (kind, size, mtime_ns, mode)."""
    out: dict[str, tuple] = {}
    stack = [tree]
    while stack:
        d = stack.pop()
        try:
            entries = list(os.scandir(d))
        except FileNotFoundError:
            continue
        for e in entries:
            st = e.stat(follow_symlinks=False)
            kind = "l" if e.is_symlink() else "d" if e.is_dir(follow_symlinks=False) else "f"
            rel = os.path.relpath(e.path, tree)
            out[rel] = (kind, 0, 0, st.st_mode) if kind == "d" else (kind, st.st_size, st.st_mtime_ns, st.st_mode)
            if kind == "d":
                stack.append(Path(e.path))
    return out


# -- mounts as symlinks ----------------------------------------------------------------------


def mount_links(root: Path, mounts: Sequence[Mount]) -> Callable[[str], str]:
    """Symlink each target under root; return a function that rewrites targets' names in strings."""
    prefixes = {}
    for mnt in mounts:
        target = Path(mnt.target)
        host = Path(mnt.host).resolve()
        if target.exists() and target.resolve() == host:
            continue
        prefix = next((p for p in [*reversed(target.parents), target] if p != Path("/") and not p.exists()), None)
        if prefix is None:
            raise ToolError(f"host runtime: cannot mount {host} on {target}: it exists on this host")
        link = root / target.relative_to("/")
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(host)
        prefixes[str(prefix)] = str(root / prefix.relative_to("/"))
    if not prefixes:
        return lambda s: s
    pattern = re.compile(
        "|".join(re.escape(p) + r"(?![A-Za-z0-9._-])" for p in sorted(prefixes, key=len, reverse=True))
    )
    return lambda s: pattern.sub(lambda m: prefixes[m.group(0)], s)


def _run(argv: list[str], env: dict[str, str], workdir: str, progress: Progress | None) -> RunResult:
    try:
        # its own process group, so that kgenv stopping (SIGTERM, Ctrl-C) stops all of it, make's children too
        proc = subprocess.Popen(
            argv,
            cwd=workdir,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    except OSError as e:
        raise ToolError(f"host runtime: cannot run {argv[0]}: {e.strerror}") from None
    assert proc.stdout is not None  # stdout=PIPE
    lines = []
    try:
        for raw in proc.stdout:
            line = raw.decode(errors="replace").rstrip("\n")
            lines.append(line)
            if progress:
                progress.tick(line)
        return RunResult(proc.wait(), "\n".join(lines))
    finally:
        if proc.poll() is None:  # interrupted: the tree is restored next, so nothing may still write
            _stop_group(proc)


def _stop_group(proc: subprocess.Popen) -> None:
    for sig, grace in ((signal.SIGTERM, 5.0), (signal.SIGKILL, None)):
        try:
            os.killpg(proc.pid, sig)
            proc.wait(grace)
            return
        except ProcessLookupError:
            return
        except subprocess.TimeoutExpired:
            continue


# -- the fingerprint -------------------------------------------------------------------------


def _sh(script: str) -> str:
    r = subprocess.run(["bash", "-c", script], capture_output=True, text=True)
    return r.stdout.strip() if r.returncode == 0 else ""


def fingerprint_differences(m: Manifest) -> list[str]:
    """Every way this machine differs from the env's recorded toolchain; empty when it is the env."""
    out = []
    for pkg, want in sorted(m.toolchain.items()):
        got = _sh(f"dpkg-query -W -f '${{Version}}' {shlex.quote(pkg)} 2>/dev/null")
        if got != want:
            out.append(f"package {pkg} {got or 'not installed'} (recorded {want})")
    cc = m.make.get("CC", "gcc")
    fp = m.fingerprint
    got = _sh(f"{shlex.quote(cc)} --version | head -n1")
    if got != fp["cc_version_text"]:
        out.append(f"{cc} --version says {got or 'nothing'!r} (recorded {fp['cc_version_text']!r})")
    with tempfile.TemporaryDirectory(prefix="kgenv-probe-") as d:
        (Path(d) / "p.c").write_text(PROBE)
        comment = _sh(
            f"cd {d} && {shlex.quote(cc)} -O2 -c p.c -o p.o && readelf -p .comment p.o "
            "| sed -n 's/^ *\\[ *[0-9a-f]*\\] *//p' | head -n1"
        )
    if comment != fp["comment"]:
        out.append(f"a probe object's .comment is {comment or 'missing'!r} (vmlinux {fp['comment']!r})")
    ld = fp.get("linux_compiler", "").rsplit(" ", 1)[-1]
    got = _sh("ld --version | head -n1")
    if not got.endswith(" " + ld):
        out.append(f"ld is {got or 'missing'!r} (recorded {ld})")
    pahole = fp.get("pahole_version", "0")
    if pahole.isdigit() and int(pahole):
        want = f"v{int(pahole) // 100}.{int(pahole) % 100}"
        got = _sh("pahole --version")
        if got != want:
            out.append(f"pahole is {got or 'missing'!r} (recorded {want})")
    config = Path(m.kernel.srctree) / (m.kernel.objtree or ".") / ".config"
    if not config.is_file():
        out.append(f"{config}: no prepared kernel tree at the recorded path")
    elif sha256_file(config) != m.kernel.config_sha256:
        out.append(f"{config}: differs from the recorded config (sha256 {m.kernel.config_sha256[:12]})")
    return out
