"""ELF reader and symbol index on synthetic input: bad files give one-line UserErrors naming the file."""

import pytest
from synthetic_objects import SHIPPED_A, UTIL, B, C
from verify_build import compile_c, link, link_module, runtime

from kgenv.elf.reader import open_elf, signed_length
from kgenv.elf.symbols import SymbolIndex
from kgenv.errors import UserError


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    d = tmp_path_factory.mktemp("elf")
    objs = [
        compile_c(d, "a.c", SHIPPED_A),
        compile_c(d, "b.c", B),
        compile_c(d, "c.c", C),
        compile_c(d, "d1/util.c", UTIL.format(n=1)),
        compile_c(d, "d2/util.c", UTIL.format(n=2)),
        runtime(d),
    ]
    return d, objs, link(d / "vmlinux", objs)


def test_index_of_linked_binary(built):
    _, _, binary = built
    index = SymbolIndex.open(binary)
    same = index.function("same")
    assert same.section == ".text" and same.size > 0 and same.binding == "global"
    assert bytes(index.code(same))[:1] == b"\xe8"  # call __fentry__
    helpers = index.functions["helper"]
    assert [h.sympos for h in helpers] == [1, 2] and {h.file for h in helpers} == {"util.c"}
    assert helpers[0].value < helpers[1].value
    assert index.function("helper") is None and index.function("helper", 2) == helpers[1]
    assert index.function("hook").binding == "global"


def test_index_of_object(built):
    _, objs, _ = built
    index = SymbolIndex.open(objs[0])
    assert index.function("scale.constprop.0").binding == "local"
    assert index.function("hook").binding == "weak"
    assert index.function("same").file == "a.c"


def test_module_signature_is_stripped(built, tmp_path):
    _, objs, _ = built
    ko = link_module(tmp_path / "m.ko", [objs[0]])
    data = ko.read_bytes()
    assert signed_length(data, str(ko)) < len(data)
    assert SymbolIndex.open(ko).function("same") is not None


@pytest.mark.parametrize(
    "mutate, words",
    [
        (lambda b: b"", "empty"),
        (lambda b: b"hello world, not elf", "not an ELF"),
        (lambda b: b[:40], "not an ELF"),
        (lambda b: b[:4] + b"\x01" + b[5:], "64-bit"),
        (lambda b: b[:18] + b"\x28\x00" + b[20:], "x86-64"),
        (lambda b: b[: len(b) // 2], "truncated"),
    ],
)
def test_bad_input_is_one_line_user_error(built, tmp_path, mutate, words):
    _, objs, _ = built
    bad = tmp_path / "bad.o"
    bad.write_bytes(mutate(objs[0].read_bytes()))
    with pytest.raises(UserError) as exc:
        SymbolIndex.open(bad)
    assert str(bad) in str(exc.value) and words in str(exc.value) and "\n" not in str(exc.value)


def test_missing_file(tmp_path):
    with pytest.raises(UserError, match="cannot read"):
        open_elf(tmp_path / "nope.o")
