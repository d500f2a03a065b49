"""Benchmark of the verify stage: index the whole -dbg vmlinux, then compare every function of a sample.

usage: python bench/bench_verify.py VMLINUX [OBJTREE [TU.o | TU.o=SHIPPED.ko ...]]
Prints the best of 3 runs for each figure against its 1 s bar, and the per-TU verdict table (markdown).
The tests assert no durations: tests/test_verify_kernel.py checks what the index holds, this script
measures how long indexing and comparing take (figures in bench/RESULTS.md).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from verify_sample import SAMPLE  # noqa: E402

from kgenv.elf.symbols import SymbolIndex  # noqa: E402
from kgenv.verify import ObjectFile, open_binary, verify_object  # noqa: E402
from kgenv.verify.records import IDENTICAL, NOT_TRACEABLE, WEAK_OVERRIDDEN  # noqa: E402


def best(fn, runs: int = 3) -> tuple[float, object]:
    times, out = [], None
    for _ in range(runs):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return min(times), out


def table(rows: list[tuple[str, list]]) -> str:
    head = (
        "| TU | functions | code identical | identical+traceable | not-traceable (code identical) "
        "| weak-overridden | differs | missing | ambiguous | reloc targets checked |"
    )
    lines = [head, "|" + "---|" * 10]
    for tu, verdicts in rows:
        count = lambda v, vs=verdicts: sum(1 for x in vs if x.verdict == v)  # noqa: E731
        nt = [x for x in verdicts if x.verdict == NOT_TRACEABLE]
        lines.append(
            f"| {tu} | {len(verdicts)} | {sum(x.code_identical for x in verdicts)} "
            f"| {count(IDENTICAL)} | {len(nt)} ({sum(x.code_identical for x in nt)}) "
            f"| {count(WEAK_OVERRIDDEN)} | {count('differs')} | {count('missing')} "
            f"| {count('ambiguous')} | {sum(x.relocs_checked for x in verdicts)} |"
        )
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    vmlinux = argv[0]
    t_index, index = best(lambda: SymbolIndex.open(vmlinux))
    print(
        f"index {vmlinux}: {len(index.symbols)} symbols, {len(index.functions)} function names, "
        f"{t_index:.3f} s (bar 1 s)"
    )
    if len(argv) < 2:
        return
    tree = Path(argv[1])
    tus = argv[2:] or SAMPLE
    image = open_binary(vmlinux)
    pairs = []
    for tu in tus:
        tu, _, ko = tu.partition("=")
        pairs.append((ObjectFile(tree / tu, tu), open_binary(ko) if ko else image))
    for obj, binary in pairs:
        verify_object(obj, binary)  # warm each binary's lazy tables (mcount, clones)

    def run():
        return [(o.tu, verify_object(o, b)) for o, b in pairs]

    t_cmp, rows = best(run)
    total = sum(len(v) for _, v in rows)
    print(f"compare {total} functions of {len(tus)} TUs: {t_cmp:.3f} s (bar 1 s)")
    print(table(rows))


if __name__ == "__main__":
    main(sys.argv[1:] or ["/tmp/dl/dbg/usr/lib/debug/boot/vmlinux-6.1.0-57-amd64"])
