"""The build's refusal classes without Docker: `.cold` parts, identical-code folding, nothing registered.

The real-kernel fixtures (fixtures/patches/cold-error-path, refuse-icf, refuse-module-tracepoint) run
in tests/test_build.py; the load-time section check of `.klp.rela` is in tests/test_klp.py.
"""

import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest

from kgenv.build import pipeline
from kgenv.build.changes import CHANGED, UNCHANGED, Changes, FunctionChange
from kgenv.build.report import FunctionRecord
from kgenv.elf.symbols import SymbolIndex


def changes(*rows: tuple[str, str, str]) -> Changes:
    return Changes("x.o", tuple(FunctionChange(n, s, o) for n, s, o in rows), ())


def test_a_changed_cold_part_stands_for_its_parent():
    got = pipeline._to_replace(
        changes(
            ("foo.cold", CHANGED, ""),
            ("foo", UNCHANGED, ""),
            ("bar", CHANGED, ""),
            ("bar.cold", CHANGED, ""),
            ("baz.isra.0.cold", CHANGED, "baz.isra.1.cold"),
        )
    )
    assert got == ["foo", "bar", "baz.isra.1"]  # the parent once; a clone stands for its callers (map)


def test_clone_parent_of_a_cold_part_is_still_a_clone():
    assert pipeline._CLONE.search(pipeline._to_replace(changes(("baz.isra.0.cold", CHANGED, "")))[0])


def _build(tmp_path: Path, functions: list[FunctionRecord]) -> pipeline.Build:
    req = pipeline.Request(diff=tmp_path / "x.diff", env=None, outdir=tmp_path / "out", name="x")  # type: ignore[arg-type]
    b = pipeline.Build(req, rt=None)  # type: ignore[arg-type]
    b.functions = functions
    return b


def test_a_module_that_registers_nothing_is_refused(tmp_path):
    b = _build(tmp_path, [FunctionRecord("f", "x.o", "vmlinux", "refused", reason="clone")])
    with pytest.raises(pipeline.Refusal) as exc:
        b._must_register()
    assert str(exc.value).startswith("no-function-registered: ") and "\n" not in str(exc.value)
    assert exc.value.exit_code == 1
    _build(tmp_path, [FunctionRecord("f", "x.o", "vmlinux", "replaced")])._must_register()


def test_refusal_line_names_the_class():
    icf = FunctionRecord(
        "foo_ok", "x.o", "m", "refused", reason=pipeline.ICF, note="shares its address with bar_ok, baz_ok"
    )
    assert pipeline._refusal_line(icf) == "identical-code-folding: foo_ok shares its address with bar_ok, baz_ok"
    other = FunctionRecord("f", "x.o", "m", "refused", reason="missing", note="not in the object")
    assert pipeline._refusal_line(other) == "missing: f not in the object"
    bare = FunctionRecord("f", "x.o", "m", "refused", note="not in the object")
    assert pipeline._refusal_line(bare) == "f: not in the object"


# gcc -fipa-icf folds identical static functions onto one symbol place (here: three of them)
ORIGINAL = """
struct s { int a, b; };
static int __attribute__((noinline)) foo_ok(struct s *p) { return p->a * 3 + p->b; }
static int __attribute__((noinline)) bar_ok(struct s *p) { return p->a * 3 + p->b; }
static int __attribute__((noinline)) baz_ok(struct s *p) { return p->a * 3 + p->b; }
int use(struct s *p) { return foo_ok(p) + bar_ok(p + 1) * 2 + baz_ok(p + 2) * 4; }
"""


def _obj(tmp_path: Path, name: str, src: str) -> Path:
    c = tmp_path / f"{name}.c"
    c.write_text(src)
    o = tmp_path / f"{name}.o"
    subprocess.run(["gcc", "-O2", "-ffunction-sections", "-fno-ipa-sra", "-c", str(c), "-o", str(o)], check=True)
    return o


def _folding(tmp_path: Path, patched_src: str) -> pipeline._Folding:
    running = SymbolIndex.open(_obj(tmp_path, "running", ORIGINAL))
    resolver = SimpleNamespace(find=running.first, binary=SimpleNamespace(index=running))
    unit = SimpleNamespace(
        resolver=resolver, target=SimpleNamespace(is_module=True), patched=_obj(tmp_path, "patched", patched_src)
    )
    return pipeline._Folding(unit)  # type: ignore[arg-type]


def test_identical_code_folding_is_refused_unless_every_alias_gets_the_same_fix(tmp_path):
    one = ORIGINAL.replace(
        "static int __attribute__((noinline)) foo_ok(struct s *p) { return p->a * 3",
        "static int __attribute__((noinline)) foo_ok(struct s *p) { return p->a * 5",
    )
    assert _folding(tmp_path, one).aliases("foo_ok") == ["bar_ok", "baz_ok"]
    assert _folding(tmp_path, ORIGINAL.replace("p->a * 3", "p->a * 5")).aliases("foo_ok") == []  # all three fixed alike
    assert _folding(tmp_path, one).aliases("nosuch") == []


def test_every_refusal_class_is_in_the_docs_table():
    """docs/build.md's 'What kgenv refuses and why' matches the code: every class constant is there."""
    from kgenv.build import gensrc
    from kgenv.elf import klp
    from kgenv.verify import records

    docs = (Path(__file__).resolve().parents[1] / "docs" / "build.md").read_text()
    table = docs[docs.index("## What kgenv refuses and why") :]
    classes = {
        v
        for mod, names in (
            (pipeline, ("ICF", "NOTHING_REGISTERED", "ASSEMBLY", "DELETES", "BUILD_FILES", "HEADERS", "DATA")),
            (pipeline, ("NO_CHANGE", "NOT_REPRODUCED", "CLONE", "AMBIGUOUS_SYMBOL", "BOOT_FAILED", "NO_COMPILE")),
            (gensrc, ("NO_DEFINITION", "NEW_STATE", "STATE_COPY", "NOTRACE", "FREED_CODE", "MISSING_SYMBOL")),
            (gensrc, ("NO_EXTERN", "POINTER_INTO_PATCH", "UNPARSABLE", "ALIAS_SPLIT")),
            (klp, ("SPECIAL_SECTION",)),
        )
        for v in (getattr(mod, n) for n in names)
    } | (set(records.VERDICTS) - {records.IDENTICAL, records.DIFFERS})
    assert len(classes) >= 20
    missing = sorted(c for c in classes if f"`{c}`" not in table)
    assert not missing, f"refusal classes missing from docs/build.md: {missing}"
