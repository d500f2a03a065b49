"""The farm's cache identity covers exactly the code a build can reach."""

from pathlib import Path

from kgenv.farm.identity import ENTRY_FILES, PKG, build_closure


def _names(files: list[Path], pkg: Path) -> set[str]:
    return {str(f.relative_to(pkg)) for f in files}


def test_the_build_closure_of_the_real_package():
    names = _names(build_closure(), PKG)
    # the pipeline, what it runs in the container by module name, the proof and the boot test
    assert {
        "build/pipeline.py",
        "build/cfacts.py",
        "verify/code.py",
        "boot/qemu.py",
        "elf/klp.py",
        "manifest.py",
        "cli/build.py",
    } <= names
    # what a build never runs: scheduling, audit, presenters, snapshots, other commands
    assert not {n for n in names if n.startswith(("farm/", "audit/", "report/"))}
    assert not names & {"env/vendor.py", "env/debian.py", "cli/audit.py", "cli/farm.py"}


def test_the_entry_files_exist():
    assert all((PKG / e).is_file() for e in ENTRY_FILES) and ENTRY_FILES


def test_closure_follows_imports_packages_and_run_as_module(tmp_path):
    pkg = tmp_path / "kgenv"
    files = {
        "__init__.py": "",
        "cli/__init__.py": "import kgenv.unused\n",
        "cli/build.py": "from kgenv.a import b\n\ndef f():\n    from kgenv import c\n",
        "a/__init__.py": "",
        "a/b.py": "CMD = 'python3 -m kgenv.d.e --flag'\n",
        "c.py": "",
        "d/__init__.py": "",
        "d/e.py": "",
        "unused.py": "",
    }
    for rel, text in files.items():
        (pkg / rel).parent.mkdir(parents=True, exist_ok=True)
        (pkg / rel).write_text(text)
    assert _names(build_closure("kgenv.cli.build", pkg), pkg) == {
        "__init__.py",
        "cli/build.py",
        "a/__init__.py",
        "a/b.py",
        "c.py",
        "d/__init__.py",
        "d/e.py",
    }
