"""Throwaway derivatives of an env image with extra distro packages (e.g. a candidate compiler)."""

import re
import shlex

from kgenv.errors import ToolError, UserError
from kgenv.manifest import Manifest

PKG_RE = re.compile(r"^[a-z0-9][a-z0-9+.-]*(=[A-Za-z0-9.+~:-]+)?$")


def with_packages(rt, m: Manifest, packages: list[str], progress=None) -> str:
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
    script = ("apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "
              f"--no-install-recommends {shlex.join(packages)} && rm -rf /var/lib/apt/lists/*")
    container = rt.client.containers.create(m.image.id, ["bash", "-c", script])
    try:
        container.start()
        code = container.wait()["StatusCode"]
        if code:
            raise ToolError(f"installing {' '.join(packages)} into {m.name} failed:\n"
                            f"{container.logs().decode(errors='replace')[-1500:]}")
        repo, _, name = tag.rpartition(":")
        return container.commit(repository=repo, tag=name).id
    finally:
        container.remove(force=True)


def remove_with_derived(rt, m: Manifest) -> None:
    """Remove an env's image and the derivatives built on it (the engine refuses otherwise)."""
    for image in rt.client.images.list(name=f"kgenv-derived/{m.name}"):
        rt.remove(image.id)
    rt.remove(m.image.id)
