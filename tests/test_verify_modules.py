"""Real-kernel tier: TUs of multi-object modules verified against the shipped .ko, relaxation in vmlinux.

A shipped module is an `ld -r` of many objects: relocations name symbols of other objects,
section symbols and merged strings. The rebuilt TUs (compiled like `kgenv build`: the recorded
make line plus -ffunction-sections -fdata-sections) must verify identical; a TU with a changed
callee or string, or one verified against another module, must not.
"""

import subprocess
from concurrent.futures import ThreadPoolExecutor

import pytest

from kgenv.build.compile import compile_tus
from kgenv.build.pipeline import SECTIONS
from kgenv.verify import open_binary, verify
from kgenv.verify.records import (
    DIFFERENT_CALLEE,
    DIFFERENT_DATA,
    DIFFERS,
    IDENTICAL,
    MODULO_RELAXATION,
    NOT_TRACEABLE,
)

pytestmark = [pytest.mark.archive, pytest.mark.docker]

# one TU per subsystem -> its shipped module ("" = the -dbg vmlinux)
TUS = {
    "fs/ext4/namei.o": "kernel/fs/ext4/ext4.ko",
    "fs/ext4/inode.o": "kernel/fs/ext4/ext4.ko",  # static inline copies pinned by their callers
    "arch/x86/kvm/mmu/mmu.o": "kernel/arch/x86/kvm/kvm.ko",
    "fs/squashfs/super.o": "kernel/fs/squashfs/squashfs.ko",
    "net/openvswitch/flow.o": "kernel/net/openvswitch/openvswitch.ko",
    "drivers/usb/core/hub.o": "kernel/drivers/usb/core/usbcore.ko",
    "fs/xfs/xfs_inode.o": "kernel/fs/xfs/xfs.ko",
    "net/core/dev.o": "",
}
# fs/squashfs/super.c with one callee and one string changed (same code bytes, other targets)
WRONG = [
    ("\tkfree(fc->fs_private);\n", "\tkvfree(fc->fs_private);\n"),
    ('"Please update your kernel"', '"Please update your kernal"'),
]


@pytest.fixture(scope="module")
def objs(env, docker_rt, debian_kernel, tmp_path_factory):
    """The TUs and the wrong squashfs super.o, compiled once for this module's tests (two containers)."""
    overlay = tmp_path_factory.mktemp("wrong-overlay")
    series = debian_kernel.source_tarball.name.removesuffix(".tar.xz")
    subprocess.run(
        [
            "tar",
            "-xf",
            str(debian_kernel.source_tarball),
            "-C",
            str(overlay),
            "--strip-components=1",
            f"{series}/fs/squashfs/super.c",
        ],
        check=True,
    )
    src = overlay / "fs/squashfs/super.c"
    text = src.read_text()
    for old, new in WRONG:
        assert text.count(old) == 1, old
        text = text.replace(old, new)
    src.write_text(text)
    with ThreadPoolExecutor(2) as pool:
        right = pool.submit(
            compile_tus, docker_rt, env, list(TUS), tmp_path_factory.mktemp("mods"), extra_cflags=SECTIONS
        )
        wrong = pool.submit(
            compile_tus,
            docker_rt,
            env,
            ["fs/squashfs/super.o"],
            tmp_path_factory.mktemp("wrong"),
            overlay=overlay,
            extra_cflags=SECTIONS,
        )
        return {**right.result(), "wrong": wrong.result()["fs/squashfs/super.o"]}


@pytest.fixture(scope="module")
def binaries(debian_kernel):
    return {
        ko: open_binary(debian_kernel.modules_dir / ko if ko else debian_kernel.vmlinux) for ko in set(TUS.values())
    }


@pytest.mark.parametrize("tu", list(TUS))
def test_tu_verifies_identical(objs, binaries, tu):
    report = verify([objs[tu]], binaries[TUS[tu]])
    bad = [v for v in report.verdicts if v.verdict not in (IDENTICAL, NOT_TRACEABLE) or not v.code_identical]
    assert report.verdicts and not bad, (report.summary.by_verdict, bad[:3])
    assert report.summary.relocs_checked > 100


def test_relaxed_branches_are_named(objs, binaries):
    """usbcore's hub_retry_irq_urb and vmlinux's __netif_schedule tail-jump with `jmp rel8` where the rebuild has rel32."""
    for tu, name in (("drivers/usb/core/hub.o", "hub_retry_irq_urb"), ("net/core/dev.o", "__netif_schedule")):
        (v,) = verify([objs[tu]], binaries[TUS[tu]], only={name}).verdicts
        assert v.verdict == IDENTICAL and v.reason == MODULO_RELAXATION, v
        assert "jmp 5->2" in v.note


def test_changed_callee_and_string_differ(objs, binaries):
    got = {v.name: v for v in verify([objs["wrong"]], binaries[TUS["fs/squashfs/super.o"]]).verdicts}
    free = got["squashfs_free_fs_context"]
    assert free.verdict == DIFFERS and free.reason == DIFFERENT_CALLEE and "kvfree" in free.difference.detail
    strings = [v for v in got.values() if v.verdict == DIFFERS and v.reason == DIFFERENT_DATA]
    assert strings and any("kernal" in v.difference.detail for v in strings), [v.difference for v in strings]
    others = [v for v in got.values() if v.verdict == DIFFERS and v not in strings and v is not free]
    assert not others, others


def test_tu_against_another_module_is_not_identical(objs, binaries):
    """squashfs's super.o against ext4.ko: same-named module entry points differ, the rest is missing."""
    report = verify([objs["fs/squashfs/super.o"]], binaries[TUS["fs/ext4/namei.o"]])
    assert not [v for v in report.verdicts if v.code_identical]
    assert {v.name for v in report.verdicts if v.verdict == DIFFERS} >= {"init_module", "cleanup_module"}
