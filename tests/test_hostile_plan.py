"""Hostile input: a farm plan's paths stay inside the plan's directory (symlinks resolved), unless
[options] root allows exactly one other directory."""

import pytest
from click.testing import CliRunner

from kgenv.cli import cli
from kgenv.errors import UserError
from kgenv.farm import plan as plans

FIX = '[fixes.a]\ndiff = "a.diff"\nexpected = "built"\n'


@pytest.fixture
def tree(tmp_path):
    """plans/ (the plan's directory, with a.diff) beside outside/ (a fixture stem x and a file)."""
    d, out = tmp_path / "plans", tmp_path / "outside"
    d.mkdir()
    out.mkdir()
    (d / "a.diff").write_text("--- a/x.c\n+++ b/x.c\n")
    (out / "x.diff").write_text("--- a/x.c\n+++ b/x.c\n")
    (out / "x.expect").write_text('outcome = "built"\n')
    (out / "secret").write_text("host only\n")
    return d


def refused(d, text, key, value):
    p = d / "plan.toml"
    p.write_text('kernels = ["k"]\n' + text)
    with pytest.raises(UserError) as e:
        plans.load(p)
    msg = str(e.value)
    assert "\n" not in msg
    assert msg.startswith(f"{p}: {key}: {value} leads outside the plan's directory {d}"), msg
    return msg


@pytest.mark.parametrize(
    "text, key, value",
    [
        ('[fixes.a]\ndiff = "a.diff"\nexpected = "built"\ncheck = "/etc/shadow"\n', "fixes.a.check", "/etc/shadow"),
        (
            '[fixes.a]\ndiff = "../../../../../../etc/passwd"\nexpected = "built"\n',
            "fixes.a.diff",
            "../../../../../../etc/passwd",
        ),
        ('[fixes.a]\ndiff = "../outside/secret"\nexpected = "built"\n', "fixes.a.diff", "../outside/secret"),
        ('[fixes.a]\nfixture = "../outside/x"\n', "fixes.a.fixture", "../outside/x"),
        ('fixtures = "../outside"\n', "fixtures", "../outside"),
    ],
)
def test_paths_outside_the_plan_are_refused(tree, text, key, value):
    refused(tree, text, key, value)


def test_a_symlink_out_of_the_plan_directory_is_refused(tree):
    (tree / "link.diff").symlink_to(tree.parent / "outside" / "secret")
    (tree / "sub").symlink_to(tree.parent / "outside")
    refused(tree, FIX.replace("a.diff", "link.diff"), "fixes.a.diff", "link.diff")
    refused(tree, '[fixes.a]\nfixture = "sub/x"\n', "fixes.a.fixture", "sub/x")
    refused(tree, 'fixtures = "sub"\n', "fixtures", "sub")


def test_a_fixture_directory_entry_linking_out_is_refused(tree):
    fx = tree / "fx"
    fx.mkdir()
    (fx / "y.diff").symlink_to(tree.parent / "outside" / "x.diff")
    (fx / "y.expect").write_text('outcome = "built"\n')
    refused(tree, 'fixtures = "fx"\n', "fixes.y.diff", str(fx / "y.diff"))


def test_options_root_allows_one_other_directory(tree):
    p = tree / "plan.toml"
    p.write_text(
        'kernels = ["k"]\nfixtures = "../outside"\n[fixes.b]\nfixture = "../outside/x"\n'
        '[options]\nroot = "../outside"\n'
    )
    pl = plans.load(p)
    assert {f.name for f in pl.fixes} == {"x", "b"}
    assert pl.options.root == (tree.parent / "outside").resolve()
    assert all(f.diff == (tree.parent / "outside" / "x.diff").resolve() for f in pl.fixes)
    # ... and only that one: /etc stays out
    p.write_text('kernels = ["k"]\n' + FIX + 'check = "/etc/hostname"\n[options]\nroot = "../outside"\n')
    with pytest.raises(UserError, match=r"fixes.a.check: /etc/hostname leads outside .* and options.root "):
        plans.load(p)


def test_options_root_must_be_a_directory(tree):
    p = tree / "plan.toml"
    p.write_text('kernels = ["k"]\n' + FIX + '[options]\nroot = "nowhere"\n')
    with pytest.raises(UserError, match=f"^{p}: options.root: nowhere: no such directory$"):
        plans.load(p)
    p.write_text('kernels = ["k"]\n' + FIX + "[options]\nroot = 1\n")
    with pytest.raises(UserError, match="options.root must be a directory path"):
        plans.load(p)


def test_farm_run_refuses_it_in_one_line_before_any_job(tree, tmp_path):
    p = tree / "plan.toml"
    p.write_text('kernels = ["k"]\n[fixes.a]\ndiff = "a.diff"\nexpected = "built"\ncheck = "/etc/shadow"\n')
    r = CliRunner().invoke(cli, ["farm", "run", str(p), "-o", str(tmp_path / "out")])
    assert r.exit_code == 2
    assert r.stderr.strip().splitlines() == [
        f"kgenv: {p}: fixes.a.check: /etc/shadow leads outside the plan's directory {tree} "
        "(options.root allows one other directory)"
    ]
    assert not (tmp_path / "out").exists()
