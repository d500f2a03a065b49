"""What the guest loads before a target module: depends= and softdep=pre:, resolved as modprobe would."""

import json
import subprocess
from pathlib import Path

import pytest
from verify_build import compile_c

from kgenv.boot import payload
from kgenv.boot.deps import ModuleTree, normalize, plan, softdeps_pre

# module path -> its .modinfo entries; modules.order lists them in this order
MODULES = {
    "kernel/lib/helper.ko": ["depends="],
    "kernel/crypto/hashy_generic.ko": ["alias=hashy", "alias=crypto-hashy", "depends=helper"],
    "kernel/crypto/hashy-fast.ko": ["alias=hashy", "alias=cpu:type:x86,ven*:feature:*0094*", "depends="],
    "kernel/lib/libx.ko": ["softdep=pre: hashy", "depends="],
    "kernel/drivers/wild.ko": ["alias=platform:leds*", "depends="],
    "kernel/drivers/postmod.ko": ["depends="],
    "kernel/fs/tgt.ko": [
        # a builtin name, a builtin's alias, a wildcard alias, a dashed module name, nothing at all
        "softdep=pre: crc32 crypto-bi platform:leds-gpio hashy-fast nowhere post: postmod",
        "softdep=postmod",  # no pre:/post: word: modprobe ignores it
        "depends=libx",
    ],
    "kernel/fs/cyc_a.ko": ["softdep=pre: cyc-b", "depends="],
    "kernel/fs/cyc_b.ko": ["depends=cyc_a"],
}


def _module(root: Path, rel: str, entries: list[str]) -> None:
    lines = "".join(f'.asciz \\"{e}\\"\\n' for e in entries)
    obj = compile_c(
        root, rel.removesuffix(".ko") + ".c", f'__asm__(".section .modinfo,\\"a\\"\\n{lines}.previous\\n");\n'
    )
    obj.rename(root / rel)


@pytest.fixture
def tree(tmp_path, monkeypatch) -> ModuleTree:
    monkeypatch.setenv("KGENV_CACHE", str(tmp_path / "cache"))
    root = tmp_path / "lib/modules/6.1.0-test"
    for rel, entries in MODULES.items():
        _module(root, rel, entries)
    (root / "modules.order").write_text("".join(f"{rel}\n" for rel in MODULES))
    (root / "modules.builtin").write_text("kernel/lib/crc32.ko\nkernel/crypto/bi.ko\n")
    (root / "modules.builtin.modinfo").write_bytes(b"bi.alias=crypto-bi\0bi.license=GPL\0")
    shipped = {Path(r).name.removesuffix(".ko").replace("-", "_"): root / r for r in MODULES}
    return ModuleTree(root, shipped, "deadbeef00")


def _names(paths) -> list[str]:
    return [Path(p).name for p in paths]


def test_softdep_words_are_read_as_modprobe_reads_them():
    info = [("softdep", "pre: a b-c post: d"), ("softdep", "ecb"), ("softdep", "post: e pre: f"), ("depends", "g")]
    assert softdeps_pre(info) == ["a", "b-c", "f"]
    assert normalize("crc32c-intel") == "crc32c_intel" and normalize("pci:v[a-z]-x") == "pci:v[a-z]_x"


def test_pre_softdeps_come_first_recursively_and_only_they_are_optional(tree):
    p = plan(tree, ["tgt"])
    assert _names(p.paths) == ["helper.ko", "hashy_generic.ko", "hashy-fast.ko", "libx.ko", "wild.ko", "tgt.ko"]
    assert set(_names(p.optional)) == {"helper.ko", "hashy_generic.ko", "hashy-fast.ko", "wild.ko"}
    # built-in names and aliases need nothing; only the word nothing provides is a note
    assert p.notes == ("tgt: softdep nowhere is no shipped or built-in module; loaded without it",)


def test_a_cycle_ends_and_a_module_needed_by_another_target_is_not_optional(tree):
    cyc = plan(tree, ["cyc_a"])
    assert _names(cyc.paths) == ["cyc_b.ko", "cyc_a.ko"] and _names(cyc.optional) == ["cyc_b.ko"]
    both = plan(tree, ["libx", "hashy-fast"])
    assert _names(both.paths) == ["helper.ko", "hashy_generic.ko", "hashy-fast.ko", "libx.ko"]
    assert tree.shipped["hashy_fast"] not in both.optional and tree.shipped["hashy_generic"] in both.optional
    assert plan(tree, ["crc32", "vmlinux"]).paths == ()  # built in: nothing to load


def test_the_alias_scan_is_cached_per_kernel_and_redone_for_another_module_set(tree, tmp_path):
    plan(tree, ["tgt"])
    cached = tmp_path / "cache/modules/modindex-deadbeef00.json"
    data = json.loads(cached.read_text())
    assert data["shipped"]["wild"] == ["platform:leds*"] and "crypto-bi" in data["builtin"]["bi"]
    # the next plan reads the cache, not the modules: an alias taken out there is gone
    data["shipped"]["wild"] = []
    cached.write_text(json.dumps(data))
    assert "wild.ko" not in _names(plan(tree, ["tgt"]).paths)
    # another module set under the same key is not this cache's: scanned again
    fewer = ModuleTree(tree.root, {k: v for k, v in tree.shipped.items() if k != "postmod"}, tree.key)
    assert "wild.ko" in _names(plan(fewer, ["tgt"]).paths)
    # a corrupt cache file is scanned again, not trusted
    cached.write_text(json.dumps({**data, "shipped": {**data["shipped"], "wild": "platform:x"}}))
    assert "wild.ko" in _names(plan(tree, ["tgt"]).paths)
    # no usable key, no cache file
    plan(ModuleTree(tree.root, tree.shipped, "../x"), ["tgt"])
    assert [p.name for p in cached.parent.iterdir()] == [cached.name]


def test_optional_modules_are_marked_in_the_initramfs(tmp_path):
    mods = [tmp_path / "crc32c_generic.ko", tmp_path / "libcrc32c.ko"]
    for ko in mods + [tmp_path / "m.ko"]:
        ko.write_bytes(b"\x7fELF module")
    path = payload.build(
        tmp_path / "i.cpio",
        module=tmp_path / "m.ko",
        name="m",
        busybox=payload.find_busybox(),
        check=None,
        sympos="",
        transition_timeout=5,
        check_timeout=3,
        targets=mods,
        optional={mods[0]},
    )
    names = subprocess.run(["cpio", "-t", "-F", str(path)], capture_output=True, text=True, check=True).stdout.split()
    assert [n for n in names if n.startswith("kgenv/target/")] == [
        "kgenv/target/000-crc32c_generic.optional.ko",
        "kgenv/target/001-libcrc32c.ko",
    ]
