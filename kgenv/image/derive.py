"""Throwaway derivatives of an env image with extra distro packages (e.g. a candidate compiler)."""

import re
import shlex

from kgenv.errors import ToolError, UserError
from kgenv.manifest import Manifest
from kgenv.progress import Progress
from kgenv.runtime.base import Runtime

PKG_RE = re.compile(r"^[a-z0-9][a-z0-9+.-]*(=[A-Za-z0-9.+~:-]+)?$")


def with_packages(rt: Runtime, m: Manifest, packages: list[str], progress: Progress | None = None) -> str:
    """The env image plus `packages` from the env's own suites; built once, then reused by tag.

    Installing needs the network, so this runs outside the no-network build path; the
    result is only ever used for comparisons (audit, negative controls), never to ship.
    """
    bad = [p for p in packages if not PKG_RE.match(p)]
    if bad:
        raise UserError(f"{bad[0]}: not a Debian package name")
    tag = f"kgenv-derived/{m.name}:" + "_".join(p.replace("=", "-").replace(":", "-") for p in sorted(packages))[:120]
    found = rt.image_id(tag)
    if found:
        return found
    if progress:
        progress.step(f"derive {m.name} + {' '.join(packages)}")
    script = (
        "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "
        f"--no-install-recommends {shlex.join(packages)} && rm -rf /var/lib/apt/lists/*"
    )
    repo, _, name = tag.rpartition(":")
    r, image_id = rt.commit_run(m.image.id, ["bash", "-c", script], repo, name)
    if image_id is None:
        raise ToolError(f"installing {' '.join(packages)} into {m.name} failed:\n{r.output[-1500:]}")
    return image_id


def remove_with_derived(rt: Runtime, m: Manifest) -> None:
    """Remove an env's image and the derivatives built on it (the engine refuses otherwise)."""
    for image_id in rt.image_ids(f"kgenv-derived/{m.name}"):
        rt.remove(image_id)
    rt.remove(m.image.id)
