"""Audit parts without a kernel: fingerprint findings, sampling, report records, JUnit and HTML writers."""

import json
from pathlib import Path

import junitparser
import pytest

from kgenv import manifest
from kgenv.audit import present, probe, sample
from kgenv.audit.rebuild import error_for
from kgenv.audit.records import (
    MISMATCH,
    REPRODUCES,
    TU_BUILD_FAILED,
    TU_DIFFERS,
    TU_IDENTICAL,
    AuditReport,
    Candidate,
    DisasmRow,
    Finding,
    FunctionDiff,
    TuResult,
)
from kgenv.errors import UserError
from kgenv.report import html as H
from kgenv.report.junit import Case, Suite, to_xml

ENV = Path(__file__).resolve().parent.parent / "envs" / "debian-6.1.0-57-amd64.toml"


@pytest.fixture(scope="module")
def m():
    return manifest.load(str(ENV))


def _probe_output(cc: str, comment: str = "GCC: (Debian 12.2.0-14+deb12u1) 12.2.0", drift: str = "") -> str:
    return "\n".join(
        [
            f"CC={cc}",
            "LD=GNU ld (GNU Binutils for Debian) 2.40",
            "PAHOLE=v1.24",
            "PKG_binutils=2.40-2",
            "PKG_dwarves=1.24-4.1",
            f"COMMENT={comment}",
            "TREE=ok",
            "OLDDEFCONFIG=ok",
            drift,
        ]
    )


def _by_item(findings):
    return {f.item: f for f in findings}


def test_same_toolchain_has_no_differences(m):
    found = probe.findings(m, Candidate("env", "env", cc="gcc-12"), _probe_output(m.fingerprint["cc_version_text"]))
    assert all(f.same for f in found), [f for f in found if not f.same]
    assert {"compiler.version", "compiler.package-release", "binutils.version", "pahole.version", "config"} <= set(
        _by_item(found)
    )


def test_package_release_is_named_as_such(m):
    found = _by_item(
        probe.findings(m, Candidate("image", "x", cc="gcc-12"), _probe_output("gcc-12 (Debian 12.2.0-14) 12.2.0"))
    )
    assert found["compiler.version"].same
    rel = found["compiler.package-release"]
    assert not rel.same and rel.kind == "package-release"
    assert (rel.expected, rel.candidate) == ("12.2.0-14+deb12u1", "12.2.0-14")
    assert "another distro package build" in rel.note


def test_gnu_and_gcc_spellings_are_not_a_difference():
    found = _by_item(probe.compiler_findings("gcc (GNU) 12.2.0", "gcc (GCC) 12.2.0"))
    assert all(f.same for f in found.values())
    assert "spell the same" in found["compiler.vendor"].note
    found = _by_item(probe.compiler_findings("gcc (GNU) 12.2.0", "gcc (GCC) 12.3.0"))
    assert not found["compiler.version"].same


def test_config_drift_parsed_from_olddefconfig_diff(m):
    drift = "\n".join(
        [
            'DRIFT< CONFIG_CC_VERSION_TEXT="gcc-12 (Debian 12.2.0-14+deb12u1) 12.2.0"',
            'DRIFT> CONFIG_CC_VERSION_TEXT="gcc-11 (Debian 11.3.0-12) 11.3.0"',
            "DRIFT< CONFIG_GCC_VERSION=120200",
            "DRIFT> CONFIG_GCC_VERSION=110300",
            "DRIFT< CONFIG_INIT_STACK_ALL_ZERO=y",
            "DRIFT> # CONFIG_INIT_STACK_NONE is not set",
        ]
    )
    cand = Candidate("derived", "gcc-11", cc="gcc-11", make={"CC": "gcc-11"})
    found = _by_item(probe.findings(m, cand, _probe_output("gcc-11 (Debian 11.3.0-12) 11.3.0", drift=drift)))
    assert found["config.GCC_VERSION"].expected == "120200" and found["config.GCC_VERSION"].candidate == "110300"
    assert found["config.CC_VERSION_TEXT"].candidate == "gcc-11 (Debian 11.3.0-12) 11.3.0"  # quotes stripped
    assert found["config.INIT_STACK_ALL_ZERO"].candidate == "(absent)"
    assert found["config.INIT_STACK_NONE"].candidate == "n"
    assert found["make.CC"].expected == "gcc-12" and found["make.CC"].candidate == "gcc-11"
    assert "config" not in found  # "unchanged" is only reported when nothing drifted


def test_missing_tree_and_failed_olddefconfig_are_findings(m):
    out = _probe_output(m.fingerprint["cc_version_text"]).replace("TREE=ok", "")
    assert not _by_item(probe.findings(m, Candidate("image", "x"), out))["config"].same
    out = _probe_output(m.fingerprint["cc_version_text"]).replace("OLDDEFCONFIG=ok", "OLDDEFCONFIG=failed")
    assert _by_item(probe.findings(m, Candidate("image", "x"), out))["config"].candidate == "olddefconfig failed"


def test_probe_script_names_the_candidate_compiler(m):
    s = probe.script(m, Candidate("derived", "gcc-11", cc="gcc-11", make={"CC": "gcc-11"}))
    assert "gcc-11 --version" in s and "CC=gcc-11" in s and "olddefconfig" in s


def test_tu_paths():
    assert sample.tu_of("fs/namei.c") == "fs/namei.o" == sample.tu_of("fs/namei.o")
    for bad in ("../etc/passwd.o", "/abs/x.o", "fs/namei.h", ".o"):
        with pytest.raises(UserError):
            sample.tu_of(bad)


def test_sample_is_seeded_and_sorted():
    pop = [f"d/{i:04}.o" for i in range(500)]
    a, b, c = sample.choose(pop, 20, 7), sample.choose(pop, 20, 7), sample.choose(pop, 20, 8)
    assert a == b and a != c and a == sorted(a) and len(set(a)) == 20
    assert sample.choose(pop[:5], 20, 1) == pop[:5]
    with pytest.raises(UserError):
        sample.choose(pop, 0, 1)


def test_error_attribution():
    log = "\n".join(
        [
            "  CC      fs/pipe.o",
            "fs/pipe.c:12:3: error: 'x' undeclared",
            "make[3]: *** [scripts/Makefile.build:250: fs/pipe.o] Error 1",
            "make: Target 'lib/x.o' not remade because of errors.",
        ]
    )
    assert "undeclared" in error_for("fs/pipe.o", log)
    assert "lib/x.o" not in error_for("lib/x.o", log)  # falls back to the build's first errors
    assert "undeclared" in error_for("lib/x.o", log)


def report(diff: bool = True, drift: tuple = ()) -> AuditReport:
    tus = (
        TuResult("fs/a.o", TU_IDENTICAL, 3, 3),
        TuResult(
            "fs/b.o",
            TU_DIFFERS if diff else TU_IDENTICAL,
            4,
            2 if diff else 4,
            2 if diff else 0,
            first_function="b_fn" if diff else "",
            first_reason="layout-size" if diff else "",
        ),
    )
    diffs = (
        (
            FunctionDiff("b_fn", "fs/b.o", "differs", "layout-size", 120, 6, "mov eax, 1 <&>", "mov rbp, rsp"),
            FunctionDiff("b_gn", "fs/b.o", "differs", "register-allocation", 40, 2, "mov ecx, edx", "mov eax, edx"),
        )
        if diff
        else ()
    )
    rows = (
        (
            DisasmRow("fs/b.o", "b_fn", 0, "push rbp", "push rbp", True),
            DisasmRow("fs/b.o", "b_fn", 6, "mov eax, 1", "mov rbp, rsp", False),
        )
        if diff
        else ()
    )
    findings = (Finding("compiler.version", "12.2.0", "12.2.0", True, "version"), *drift)
    return AuditReport(
        "env-x",
        "6.1.0-x",
        Candidate("derived", "gcc-11 <pkg>", "sha256:ab", "gcc-11", {"CC": "gcc-11"}),
        findings,
        tus,
        diffs,
        rows,
        {"mode": "named", "requested": 2},
        {"total_s": 3.0},
    )


def test_verdict_and_exit_code():
    assert report(diff=True).verdict == MISMATCH and report(diff=True).exit_code == 1
    assert report(diff=False).verdict == REPRODUCES and report(diff=False).exit_code == 0
    cc_text = Finding("config.CC_VERSION_TEXT", "a", "b", False, "config-drift")
    assert report(diff=False, drift=(cc_text,)).verdict == REPRODUCES  # a compiler name reaches no code
    gcc = Finding("config.GCC_VERSION", "120200", "110300", False, "config-drift")
    assert report(diff=False, drift=(gcc,)).verdict == MISMATCH
    failed = AuditReport("e", "r", Candidate("env", "env"), (), (TuResult("x.o", TU_BUILD_FAILED, error="boom"),), ())
    assert failed.verdict == MISMATCH


def _depth(x) -> int:
    if isinstance(x, dict):
        return 1 + max((_depth(v) for v in x.values()), default=0)
    if isinstance(x, list):
        return max((_depth(v) for v in x), default=0)  # a list of flat records adds no level
    return 0


def test_json_two_levels_stable_and_round_trips():
    r = report()
    d = json.loads(present.as_json(r))
    assert _depth(d) <= 2
    assert list(d) == [
        "env",
        "release",
        "verdict",
        "exit_code",
        "candidate",
        "summary",
        "sample",
        "timings",
        "fingerprint",
        "tus",
        "differing",
        "disassembly",
    ]
    assert d["summary"]["percent_identical"] == round(100 * 5 / 7, 2)
    assert AuditReport.from_dict(d).to_dict() == d


def test_junit_writer_escapes_and_parses(tmp_path):
    xml = to_xml(
        [
            Suite(
                "s <1>",
                (
                    Case("a&b", 'c"d', 1.25, failure="bad \x01 <x>", details="]]> & <y>"),
                    Case("ok", "c"),
                    Case("err", "c", error="E"),
                    Case("sk", "c", skipped="later"),
                ),
            )
        ]
    )
    path = tmp_path / "j.xml"
    path.write_text(xml)
    suites = list(junitparser.JUnitXml.fromfile(str(path)))
    (suite,) = suites
    assert suite.name == "s <1>" and suite.tests == 4 and suite.failures == 1 and suite.errors == 1
    case = next(iter(suite))
    assert case.name == "a&b" and case.classname == 'c"d'
    assert case.result[0].message == "bad \ufffd <x>" and case.result[0].text == "]]> & <y>"


def test_audit_junit_one_case_per_tu_failures_name_functions(tmp_path):
    path = tmp_path / "audit.xml"
    path.write_text(present.junit(report()))
    (suite,) = list(junitparser.JUnitXml.fromfile(str(path)))
    cases = {c.name: c for c in suite}
    assert set(cases) == {"fs/a.o", "fs/b.o"} and cases["fs/a.o"].is_passed
    fail = cases["fs/b.o"].result[0]
    assert isinstance(fail, junitparser.Failure) and "b_fn" in fail.message and "b_gn" in fail.message
    assert "mov eax, 1 <&>" in fail.text


def test_html_escapes_and_is_self_contained():
    page = present.html(report())
    assert "gcc-11 &lt;pkg&gt;" in page and "<pkg>" not in page
    assert "mov eax, 1 &lt;&amp;&gt;" in page
    assert "<svg" in page and page.count("<rect") >= 3
    assert "http://" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "") and "https://" not in page
    assert "<script" not in page and 'class="first"' in page
    assert H.esc('"><script>') == "&quot;&gt;&lt;script&gt;"
    assert H.tag("td", H.Raw("<b>x</b>")) == "<td><b>x</b></td>"


def test_text_table_names_verdict_and_functions():
    out = present.text(report())
    assert "verdict: MISMATCH (exit 1)" in out and "b_fn" in out and "layout-size" in out


def test_fleet_outputs():
    rows = [
        present.FleetRow("env-x", "6.1.0-x", report(diff=False)),
        present.FleetRow("env-y", "6.1.0-y", report(diff=True)),
        present.FleetRow("env-z", "6.1.0-z", error="image missing"),
    ]
    assert present.fleet_exit(rows) == 2 and present.fleet_exit(rows[:2]) == 1 and present.fleet_exit(rows[:1]) == 0
    d = json.loads(present.fleet_json({"kind": "derived", "label": "gcc-11"}, rows))
    by_env = {e["env"]: e for e in d["envs"]}
    assert _depth(d) <= 2 and by_env["env-y"]["verdict"] == MISMATCH and by_env["env-z"]["verdict"] == "error"
    assert list(by_env["env-z"]) == list(by_env["env-x"])  # stable keys, error or not
    text = present.fleet_text("gcc-11", rows)
    assert all(name in text for name in ("env-x", "env-y", "env-z"))
    assert "<svg" in present.fleet_html("gcc-11", rows)


@pytest.mark.parametrize("text", ["not json", "[]", '{"env": 3}', '{"summary": "x"}'])
def test_from_json_rejects_what_is_not_a_report_in_one_line(tmp_path, text):
    from click.testing import CliRunner

    from kgenv.cli import cli

    bad = tmp_path / "r.json"
    bad.write_text(text)
    r = CliRunner().invoke(cli, ["audit", "--from-json", str(bad)])
    assert r.exit_code == 2
    assert r.stderr.splitlines() == [r.stderr.strip()] and r.stderr.startswith(f"kgenv: {bad}: not a kgenv audit")
