"""`kgenv verify`: compare rebuilt objects with the running kernel binary, function by function."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from kgenv import manifest
from kgenv.errors import UserError
from kgenv.verify import Report, verify
from kgenv.verify.records import IDENTICAL
from kgenv.verify.sources import Binary, LiveBinary, open_binary


def _env_binary(name: str) -> str:
    """The -dbg vmlinux recorded by the snapshot of environment `name` (in the cache)."""
    return str(manifest.load(name).file("vmlinux"))


def _open_source(env: str | None, binary: str | None, kallsyms: str | None, kcore: str | None) -> Binary:
    if kallsyms or kcore:
        if not (kallsyms and kcore):
            raise UserError("--kallsyms and --kcore go together")
        return LiveBinary(kallsyms, kcore)
    if binary:
        return open_binary(binary)
    if env:
        return open_binary(_env_binary(env))
    raise UserError("say what to verify against: --binary PATH or --env NAME")


def _table(report: Report, verbose: int) -> str:
    rows = [f"{'verdict':<16} {'function':<44} {'tu':<28} detail"]
    for v in report.verdicts:
        if v.verdict == IDENTICAL and not verbose:
            continue
        detail = v.reason or v.trace or v.note
        if v.difference and v.verdict != IDENTICAL:
            detail += f" @+{v.difference.offset:#x}: {v.difference.object_insn} | {v.difference.binary_insn}"
        if v.candidates:
            detail += " candidates: " + ", ".join(v.candidates[:6])
        rows.append(f"{v.verdict:<16} {v.name:<44} {Path(v.tu).name:<28} {detail}")
    s = report.summary
    counts = ", ".join(f"{k} {n}" for k, n in s.by_verdict.items() if n)
    rows.append(f"{s.total} functions: {counts or 'none'}; {s.relocs_checked} relocation targets checked")
    return "\n".join(rows)


@click.command("verify")
@click.option("--env", "env", metavar="NAME", help="Environment whose recorded vmlinux to use.")
@click.option("--binary", metavar="PATH", help="A vmlinux with symbols, or a .ko.")
@click.option("--kallsyms", metavar="PATH", help="Live system: /proc/kallsyms (with --kcore).")
@click.option("--kcore", metavar="PATH", help="Live system: /proc/kcore (read-only).")
@click.option("--function", "functions", multiple=True, metavar="NAME", help="Only these functions (repeatable).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option("-v", "--verbose", count=True, help="Also list identical functions.")
@click.argument("objects", nargs=-1, required=True, metavar="OBJ...")
def verify_command(env, binary, kallsyms, kcore, functions, as_json, verbose, objects):
    """Prove that each function of the rebuilt OBJ files equals the running binary."""
    source = _open_source(env, binary, kallsyms, kcore)
    report = verify(list(objects), source, set(functions) or None)
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=1, sort_keys=False))
    else:
        click.echo(_table(report, verbose))
    sys.exit(0 if report.summary.all_ok and report.summary.total else 1)
