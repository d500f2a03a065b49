"""report.json of `kgenv build`: typed records keep the JSON exactly; bad documents are one-line errors;
an env without a vmlinuz ends a --boot-test build in an error report before anything is compiled."""

import copy
import json
import re
from dataclasses import replace

import pytest
from click.testing import CliRunner
from sample_manifest import NoEngine, sample, saved_env

from kgenv.build import report as build_report
from kgenv.build.report import BuildReport, FunctionRecord
from kgenv.cli import build as cli_build
from kgenv.cli import cli
from kgenv.errors import UserError
from kgenv.fsutil import sha256_file
from kgenv.manifest import FileRef

IMAGE = "sha256:" + "7" * 64


def real_shaped() -> dict:
    """A built report with a boot test, in the key order kgenv build writes it (as --json prints it)."""
    fn = {
        "name": "cmdline_proc_show",
        "tu": "fs/proc/cmdline.o",
        "object": "vmlinux",
        "verdict": "replaced",
        "sympos": 0,
        "address": 18446744071583106464,
        "reason": "",
        "trace": "entry call __fentry__, in __mcount_loc",
        "note": "",
    }
    return {
        "kgenv": {"version": "0.1.0", "reproducer": f"kgenv build cmdline.diff --env e --image {IMAGE} -o out"},
        "env": {
            "name": "e",
            "image_id": IMAGE,
            "kernel_release": "6.1.0-57-amd64",
            "build_id": "6a" * 20,
            "version": "6.1.192-3",
        },
        "fix": {
            "name": "cmdline",
            "diff": "cmdline.diff",
            "diff_sha256": "93" * 32,
            "files": ["fs/proc/cmdline.c"],
            "tus": ["fs/proc/cmdline.o"],
        },
        "result": {
            "outcome": "built",
            "exit_code": 0,
            "reason": "",
            "module": "out/livepatch-cmdline.ko",
            "module_sha256": "2b" * 32,
            "klp_symbols": ["vmlinux.saved_command_line,0"],
            "guard_build_ids": {"vmlinux": "6a" * 20, "binfmt_misc": "d8" * 20},
        },
        "functions": [
            fn,
            {
                **fn,
                "name": "x.isra.0",
                "verdict": "refused",
                "sympos": 2,
                "address": None,
                "reason": "clone",
                "trace": "",
                "note": "only the IPA clone runs",
            },
        ],
        "stages": {
            "check": 0.002,
            "diff": 0.22,
            "compile": 5.117,
            "changes": 0.0,
            "map": 1.14,
            "generate": 1.9,
            "kbuild": 1.807,
            "klp": 0.022,
            "boot": 31.5,
        },
        "boot": {
            "result": "pass",
            "reason": "",
            "release": "6.1.0-57-amd64",
            "serial_log": "/tmp/serial.log",
            "seconds": 31.2,
            "phase_init": "ok",
            "phase_load": "ok",
            "phase_sympos": "ok",
            "phase_unload": "not-reached",
        },
    }


def test_round_trip_keeps_the_json_exactly():
    doc = real_shaped()
    rep = BuildReport.from_dict(copy.deepcopy(doc), "out/report.json")
    assert rep.to_dict() == doc
    assert json.dumps(rep.to_dict(), indent=1) == json.dumps(doc, indent=1)  # key order too: --json
    assert rep.boot is not None and rep.boot.phases["sympos"] == "ok" and rep.boot.seconds == 31.2
    assert [f.name for f in rep.replaced()] == ["cmdline_proc_show"]
    assert rep.result.guard_build_ids == {"vmlinux": "6a" * 20, "binfmt_misc": "d8" * 20}
    assert rep.functions[1] == FunctionRecord(
        "x.isra.0", "fs/proc/cmdline.o", "vmlinux", "refused", 2, None, "clone", "", "only the IPA clone runs"
    )
    no_boot = {k: v for k, v in doc.items() if k != "boot"}
    assert BuildReport.from_dict(no_boot).to_dict() == no_boot


def test_load_reads_what_to_json_wrote(tmp_path):
    rep = BuildReport.from_dict(real_shaped())
    (tmp_path / "report.json").write_text(rep.to_json())
    assert build_report.load(tmp_path / "report.json") == rep


def _set(path: str, value):
    def mutate(doc):
        *parents, key = path.split(".")
        node = doc
        for p in parents:
            node = node[int(p)] if isinstance(node, list) else node[p]
        if value is KeyError:
            del node[key]
        else:
            node[key] = value

    return mutate


@pytest.mark.parametrize(
    "mutate, message",
    [
        (_set("result.outcome", KeyError), "result.outcome: missing"),
        (_set("result.exit_code", "0"), "result.exit_code: expected an integer"),
        (_set("result.exit_code", True), "result.exit_code: expected an integer"),
        (_set("result.outcome", "maybe"), "result.outcome: 'maybe' is not one of"),
        (_set("result.klp_symbols", "vmlinux.x,0"), "result.klp_symbols: expected a list of strings"),
        (_set("result.guard_build_ids", ["6a"]), "result.guard_build_ids: expected an object of strings"),
        (_set("result.guard_build_ids", {"vmlinux": 1}), "result.guard_build_ids: expected an object of strings"),
        (_set("result.guard_build_ids", KeyError), "result.guard_build_ids: missing"),
        (_set("functions.0.address", "0xffff"), "functions[0].address: expected an integer or null"),
        (_set("functions.1.sympos", None), "functions[1].sympos: expected an integer"),
        (_set("functions.0.colour", "red"), "functions[0]: unexpected key(s) colour"),
        (_set("env", []), "env: expected an object"),
        (_set("stages.compile", "5s"), "stages.compile: expected a number"),
        (_set("boot.seconds", "31"), "boot.seconds: expected a number or null"),
        (_set("boot.phase_load", 1), "boot.phase_load: expected a string"),
        (_set("boot.extra", ""), "boot: unexpected key(s) extra"),
        (_set("functions", {}), "functions: expected a list"),
        (_set("kgenv", KeyError), "kgenv: missing"),
    ],
)
def test_malformed_reports_are_one_line_errors(mutate, message):
    doc = real_shaped()
    mutate(doc)
    with pytest.raises(UserError, match=re.escape(message)) as e:
        BuildReport.from_dict(doc, "out/report.json")
    assert str(e.value).startswith("out/report.json: ") and "\n" not in str(e.value)


def test_load_names_the_file(tmp_path):
    with pytest.raises(UserError, match="no such report"):
        build_report.load(tmp_path / "report.json")
    (tmp_path / "report.json").write_text("{")
    with pytest.raises(UserError, match=r"report.json: not valid JSON"):
        build_report.load(tmp_path / "report.json")
    (tmp_path / "report.json").write_text("[]")
    with pytest.raises(UserError, match=r"report.json: expected an object, got list"):
        build_report.load(tmp_path / "report.json")


# -- Manifest.file ------------------------------------------------------------------------------


def test_manifest_file_not_recorded_or_not_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("KGENV_CACHE", str(tmp_path))
    m = sample()
    with pytest.raises(UserError, match=r"records no \[files.vmlinuz\] \(.*bzImage") as e:
        m.file("vmlinuz")
    assert str(e.value).startswith(f"env {m.name}: ") and "\n" not in str(e.value)
    with pytest.raises(UserError, match=f"is not in the cache; run `kgenv envs restore {m.name}`") as e:
        m.file("vmlinux")
    assert str(e.value).startswith(str(tmp_path / "kernels/x/vmlinux"))
    (tmp_path / "kernels" / "x").mkdir(parents=True)
    (tmp_path / "kernels" / "x" / "vmlinux").write_bytes(b"\x7fELF")
    with pytest.raises(UserError, match=rf"sha256 differs from env {m.name}'s files.vmlinux"):
        m.file("vmlinux")  # the sample records another hash
    ref = replace(m.files["vmlinux"], sha256=sha256_file(tmp_path / "kernels" / "x" / "vmlinux"))
    m = replace(m, files={"vmlinux": ref})
    assert m.file("vmlinux") == tmp_path / "kernels" / "x" / "vmlinux"


# -- an env without vmlinuz: the build's error report, before anything runs in the engine ---------


def test_boot_test_without_vmlinuz_is_an_error_report(tmp_path, monkeypatch):
    out = tmp_path / "out"
    symvers = "0x1\tprintk\tvmlinux\tEXPORT_SYMBOL\n"
    m = saved_env(tmp_path, monkeypatch, "vendor-6.1.0", {"symvers": symvers}, keep=("vmlinux",))
    rt = NoEngine("the build ran a container although it could not boot-test")
    monkeypatch.setattr(cli_build, "make_runtime", lambda name, env: rt)
    diff = tmp_path / "fix.diff"
    diff.write_text("--- a/fs/proc/cmdline.c\n+++ b/fs/proc/cmdline.c\n@@ -1 +1 @@\n-a\n+b\n")

    r = CliRunner().invoke(cli, ["build", str(diff), "--env", m.name, "-o", str(out), "--boot-test"])

    assert r.exit_code == 2, (r.output, r.exception)
    errors = [ln for ln in r.stderr.splitlines() if not ln.startswith("[")]  # progress lines aside
    assert len(errors) == 1 and "bzImage" in errors[0]
    assert errors[0].startswith(f"kgenv: env {m.name}: its manifest records no [files.vmlinuz] (")
    rep = build_report.load(out / "report.json")
    assert (rep.result.outcome, rep.result.exit_code) == ("error", 2)
    assert rep.result.reason == errors[0].removeprefix("kgenv: ")
    assert list(rep.stages) == ["check"] and not list(out.glob("*.ko"))


class Broken(NoEngine):
    def image_id(self, ref: str):
        raise RuntimeError("engine said\nsomething odd")


def test_any_exception_in_a_stage_is_an_error_report(tmp_path, monkeypatch):
    from kgenv.build import pipeline

    monkeypatch.setenv("KGENV_CACHE", str(tmp_path))
    (tmp_path / "symvers").write_text("")
    m = replace(sample(), files={"symvers": FileRef("symvers", sha256_file(tmp_path / "symvers"), "x")})
    diff = tmp_path / "fix.diff"
    diff.write_text("")
    req = pipeline.Request(diff=diff, env=m, outdir=tmp_path / "out", name="fix")
    result = pipeline.build(req, Broken())
    assert result.exit_code == 2 and result.module is None
    assert result.report.result.outcome == "error"
    assert result.report.result.reason == "internal error: RuntimeError: engine said something odd"
    assert build_report.load(tmp_path / "out" / "report.json") == result.report
