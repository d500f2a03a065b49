"""gensrc and `__attribute__((alias))` definitions (mm/hugetlb.c's weak `alloc_bootmem_huge_page`):
facts from the real libclang, output compiled by host gcc."""

import pytest
from test_gensrc import compile_c, everywhere_but, parse

from kgenv.build.gensrc import ALIAS_SPLIT, FREED_CODE, generate

# the shape of mm/hugetlb.c in 6.1: a weak default under an alias, an __init target
HUGETLB = """\
#include "mini.h"

struct hstate { int nr; };
static int boot_pages;

int alloc_bootmem_huge_page(struct hstate *h, int nid)
	__attribute__ ((weak, alias("__alloc_bootmem_huge_page")));
int __init __alloc_bootmem_huge_page(struct hstate *h, int nid)
{
	return h->nr + nid + boot_pages;
}

int hugetlb_report(struct hstate *h)
{
	return h->nr + 1;
}

int uses_boot_alias(struct hstate *h)
{
	return alloc_bootmem_huge_page(h, 0);
}

#define __alias(symbol) __attribute__((__alias__(#symbol)))
int __default_fill(int x)
{
	return x * 2 + boot_pages;
}
int arch_fill(int x) __alias(__default_fill);

int calls_fill(int x)
{
	return arch_fill(x) + 1;
}
"""


@pytest.fixture(scope="module")
def hugetlb(tmp_path_factory):
    d = tmp_path_factory.mktemp("alias")
    return d, parse(d, HUGETLB)


def _gen(hugetlb, keep, present=None):
    d, facts = hugetlb
    return generate((d / "mini.c").read_text(), facts, set(keep), present or everywhere_but())


def _defined(syms: dict) -> set[str]:
    return {n for n, (_, defined, _) in syms.items() if defined}


def test_alias_facts(hugetlb):
    d, facts = hugetlb
    data = (d / "mini.c").read_bytes()
    by = {x["name"]: x for x in facts["decls"] if x["kind"] == "function"}
    weak = by["alloc_bootmem_huge_page"]
    assert weak["alias"] == "__alloc_bootmem_huge_page" and weak["is_definition"]
    assert weak["refs"] == ["__alloc_bootmem_huge_page"]
    assert data[weak["start"] : weak["end"]].endswith(b'alias("__alloc_bootmem_huge_page")));')  # its ';' too
    assert by["arch_fill"]["alias"] == "__default_fill"  # through the kernel's __alias() macro
    assert by["__default_fill"]["alias"] is None and by["hugetlb_report"]["alias"] is None


def test_alias_of_a_dropped_function_is_dropped_with_it(hugetlb, tmp_path):
    """The corpus failure: the weak alias stayed while its target became a declaration, and gcc
    said "aliased to external symbol"."""
    g = _gen(hugetlb, {"hugetlb_report"})
    assert g.refusals == [] and g.replaced == ["hugetlb_report"]
    assert "alloc_bootmem_huge_page" not in g.text and "arch_fill" not in g.text
    syms = compile_c(tmp_path, g.text)
    assert _defined(syms) == {"hugetlb_report", "livepatch_hugetlb_report"}


def test_alias_used_by_kept_code_is_the_running_kernels_symbol(hugetlb, tmp_path):
    g = _gen(hugetlb, {"calls_fill"})
    assert g.refusals == [] and [e.name for e in g.externs] == ["arch_fill"]
    assert "extern int arch_fill(int);" in g.text
    syms = compile_c(tmp_path, g.text)
    assert syms["arch_fill"] == ("STB_GLOBAL", False, "STT_NOTYPE")  # bound to the running kernel's
    assert "__default_fill" not in syms


def test_alias_kept_with_its_target(hugetlb, tmp_path):
    g = _gen(hugetlb, {"__default_fill", "arch_fill"})
    assert g.refusals == [] and sorted(g.replaced) == ["__default_fill", "arch_fill"]
    syms = compile_c(tmp_path, g.text)
    assert {"arch_fill", "__default_fill", "livepatch_arch_fill", "livepatch___default_fill"} <= _defined(syms)


def test_alias_and_target_new_to_the_running_kernel_are_copied_together(hugetlb, tmp_path):
    g = _gen(hugetlb, {"calls_fill"}, everywhere_but("arch_fill", "__default_fill"))
    assert g.refusals == [] and g.copied == ["arch_fill", "__default_fill"]
    assert {"arch_fill", "__default_fill"} <= _defined(compile_c(tmp_path, g.text))


@pytest.mark.parametrize(
    "keep, present, why",
    [
        # replacing the alias alone: its target stays the running kernel's, gcc cannot alias that
        ({"arch_fill"}, everywhere_but(), "arch_fill is an alias of __default_fill"),
        # the running kernel lacks the alias (a weak one overridden): a copy would need a copy of the target
        ({"calls_fill"}, everywhere_but("arch_fill"), "arch_fill is an alias of __default_fill"),
    ],
)
def test_alias_without_its_target_is_refused(hugetlb, keep, present, why):
    g = _gen(hugetlb, keep, present)
    assert [r for r in g.refusals if r.startswith(f"{ALIAS_SPLIT}: {why}")], g.refusals


def test_alias_of_init_code_is_init_code(hugetlb):
    g = _gen(hugetlb, {"uses_boot_alias"})
    assert any(r.startswith(f"{FREED_CODE}: uses_boot_alias uses alloc_bootmem_huge_page") for r in g.refusals)
