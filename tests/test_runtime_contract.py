"""The Runtime protocol is what the stages call, and both back-ends are it, signature for signature."""

import inspect
import re
from pathlib import Path
from types import SimpleNamespace

import pytest

from kgenv.errors import UserError
from kgenv.runtime.base import Runtime
from kgenv.runtime.docker import DockerRuntime
from kgenv.runtime.host import HostRuntime

PKG = Path(__file__).resolve().parent.parent / "kgenv"
METHODS = sorted(n for n, v in vars(Runtime).items() if inspect.isfunction(v) and not n.startswith("_"))


def test_every_call_a_stage_makes_on_a_runtime_is_in_the_protocol():
    called = set()
    for f in PKG.rglob("*.py"):
        if f.parent.name != "runtime":
            called |= set(re.findall(r"\brt\.(\w+)\(", f.read_text()))
    assert {"run", "image_id", "load_archive", "tag", "remove"} <= called
    assert called <= set(METHODS), called - set(METHODS)
    assert Runtime.__annotations__ == {"name": "str"}


@pytest.mark.parametrize("cls", [DockerRuntime, HostRuntime])
@pytest.mark.parametrize("method", METHODS)
def test_back_end_method_has_the_protocol_signature(cls, method):
    want = inspect.signature(getattr(Runtime, method), eval_str=True)
    assert inspect.signature(getattr(cls, method), eval_str=True) == want


@pytest.mark.parametrize("cls", [DockerRuntime, HostRuntime])
def test_back_ends_are_structural_not_inherited(cls):
    # inheriting the protocol would turn a forgotten method into one that silently returns None
    assert Runtime not in cls.__mro__ and isinstance(cls.name, str)


def test_what_the_host_cannot_do_is_one_line():
    rt = HostRuntime.__new__(HostRuntime)
    rt.m = SimpleNamespace(name="debian-x")
    for call in (
        lambda: rt.load(Path("a.tar")),
        lambda: rt.tag("sha256:" + "0" * 64, "r", "t"),
        lambda: rt.image_ids("kgenv-derived/x"),
        lambda: rt.commit_run("i", ["true"], "r", "t"),
    ):
        with pytest.raises(UserError, match=r"^host runtime: cannot .*env debian-x's build root") as e:
            call()
        assert "\n" not in str(e.value)
