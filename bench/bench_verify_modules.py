"""TUs of multi-object modules (and vmlinux TUs with relaxed branches) rebuilt in the env image and verified.

usage: python bench/bench_verify_modules.py [--env NAME] [--objs DIR] [TU.o ...]

Compiles the TUs with kgenv's own compile (`compile_tus`, the recorded make line plus the build
pipeline's `-ffunction-sections -fdata-sections`) into DIR (kept: a second run with the objects
present skips the compile), verifies each against the shipped `.ko` of its module (from the
cache's unpacked linux-image package) or the -dbg vmlinux, and prints the markdown table of
bench/verify_modules_results.md. The "before" column there is this script run with PYTHONPATH
pointing at an export of the previous commit (`git archive HEAD | tar -x -C /tmp/head`).
"""

from __future__ import annotations

import argparse
import collections
import sys
import time
from pathlib import Path

from kgenv import manifest
from kgenv.build.compile import compile_tus
from kgenv.build.pipeline import SECTIONS
from kgenv.verify import ObjectFile, open_binary, verify_object
from kgenv.verify.sources import Binary

# TU -> the shipped module it is linked into ("" = vmlinux)
TUS = {
    "fs/ext4/inode.o": "fs/ext4/ext4.ko",
    "fs/ext4/namei.o": "fs/ext4/ext4.ko",
    "fs/squashfs/super.o": "fs/squashfs/squashfs.ko",
    "fs/squashfs/block.o": "fs/squashfs/squashfs.ko",
    "fs/squashfs/namei.o": "fs/squashfs/squashfs.ko",
    "net/openvswitch/flow.o": "net/openvswitch/openvswitch.ko",
    "net/openvswitch/actions.o": "net/openvswitch/openvswitch.ko",
    "drivers/usb/core/hub.o": "drivers/usb/core/usbcore.ko",
    "drivers/usb/core/message.o": "drivers/usb/core/usbcore.ko",
    "fs/xfs/xfs_inode.o": "fs/xfs/xfs.ko",
    "arch/x86/kvm/mmu/mmu.o": "arch/x86/kvm/kvm.ko",
    "arch/x86/kvm/x86.o": "arch/x86/kvm/kvm.ko",
    "net/core/dev.o": "",  # __netif_schedule: a relaxed tail jump
    "mm/page_alloc.o": "",  # an R_X86_64_NONE annotation inside __alloc_contig_migrate_range
}


def table(rows: list[tuple[str, str, list]]) -> str:
    head = (
        "| TU | binary | functions | code identical | identical (modulo relaxation) | not-traceable (code identical) "
        "| differs (reasons) | missing | ambiguous |"
    )
    lines = [head, "|" + "---|" * 9]
    for tu, binary, vs in rows:
        n = collections.Counter(v.verdict for v in vs)
        relaxed = sum(v.reason == "identical-modulo-relaxation" for v in vs)
        reasons = collections.Counter(v.reason for v in vs if v.verdict == "differs")
        why = ", ".join(f"{k} {c}" for k, c in reasons.most_common())
        nt = [v for v in vs if v.verdict == "not-traceable"]
        lines.append(
            f"| {tu} | {binary} | {len(vs)} | {sum(v.code_identical for v in vs)} | {n['identical']} ({relaxed}) "
            f"| {len(nt)} ({sum(v.code_identical for v in nt)}) | {n['differs']}{f' ({why})' if why else ''} "
            f"| {n['missing']} | {n['ambiguous']} |"
        )
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--env", default="debian-6.1.0-57-amd64")
    ap.add_argument("--objs", type=Path, default=Path("/tmp/kgenv-bench-modules"))
    ap.add_argument("tus", nargs="*")
    args = ap.parse_args(argv)
    m = manifest.load(args.env)
    tus = args.tus or list(TUS)
    todo = [t for t in tus if not (args.objs / t).exists()]
    if todo:
        from kgenv.runtime.docker import runtime

        start = time.perf_counter()
        compile_tus(runtime(), m, todo, args.objs, extra_cflags=SECTIONS)
        print(f"compiled {len(todo)} TUs in {time.perf_counter() - start:.0f} s", file=sys.stderr)
    root = m.file_ref("vmlinux").resolve()  # <cache>/kernels/<abi>_<version>/dbg/usr/lib/debug/boot/vmlinux-*
    kernel = root.parents[5] / "image" / "lib" / "modules" / m.kernel.release / "kernel"
    binaries: dict[str, Binary] = {}
    rows = []
    for tu in tus:
        ko = TUS.get(tu, "")
        if ko not in binaries:
            binaries[ko] = open_binary(kernel / ko if ko else root)
        rows.append(
            (tu, ko.rsplit("/", 1)[-1] or "vmlinux", verify_object(ObjectFile(args.objs / tu, tu), binaries[ko]))
        )
    print(table(rows))


if __name__ == "__main__":
    main(sys.argv[1:])
