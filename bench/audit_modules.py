"""Benchmark of `kgenv audit` over vmlinux and module TUs: how many module TUs a sample holds, and time.

usage: python bench/audit_modules.py ENV [N [SEED]] [--cold]
Runs the env's own image (the control: it must reproduce) on three samples: the default
(`--objects all`), module units only (`--objects modules`, seed SEED+1 so it is not a superset of
the first), and three named TUs of multi-object modules. Prints a markdown row per run. With
--cold, the module unit cache is dropped first, so the first run also times reading the -dbg
package's module DWARF (once per kernel).
"""

from __future__ import annotations

import sys
import time

from kgenv import manifest
from kgenv.audit import audit
from kgenv.env import modunits
from kgenv.runtime.docker import runtime

NAMED = ["drivers/usb/core/quirks.c", "net/bridge/br_stp.c", "fs/ext4/inline.c"]


def row(label: str, r, wall: float, multi: set[str]) -> str:
    s, t = r.summary, r.timings
    mods = {x.object for x in r.tus if x.is_module}
    in_multi = sum(x.object in multi for x in r.tus)
    return (
        f"| {label} | {s['tus']} | {s['module_tus']} ({len(mods)} modules; {in_multi} TUs of multi-object ones) "
        f"| {s['identical']}/{s['functions']} ({s['percent_identical']:.1f} %) | {r.verdict} | {wall:.1f} s "
        f"| {t.get('compile_s', 0):.1f} s | {t.get('verify_s', 0):.2f} s | {t.get('sample_s', 0):.2f} s |"
    )


def main(argv: list[str]) -> None:
    cold = "--cold" in argv
    args = [a for a in argv if a != "--cold"]
    m = manifest.load(args[0])
    n = int(args[1]) if len(args) > 1 else 20
    seed = int(args[2]) if len(args) > 2 else 0
    if cold:
        modunits.cache_path(m).unlink(missing_ok=True)
    rt = runtime()
    print("| run | TUs | module TUs | functions identical | verdict | wall | compile | verify | sample |")
    print("|---|---|---|---|---|---|---|---|---|")
    runs = [
        (f"--sample {n} --seed {seed}" + (" (module DWARF cache cold)" if cold else ""), None, "all", seed),
        (f"--objects modules --sample {n} --seed {seed + 1}", None, "modules", seed + 1),
        ("--tu " + " ".join(NAMED), NAMED, "all", seed),
    ]
    for label, tus, objects, s in runs:
        start = time.perf_counter()
        r = audit(rt, m, None, None, tus, n, s, objects=objects)
        units = modunits.cached(m) or {}
        multi = {k for k, v in units.items() if sum(not u.endswith(".mod.c") for u in v["units"]) > 1}
        print(row(label, r, time.perf_counter() - start, multi), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
