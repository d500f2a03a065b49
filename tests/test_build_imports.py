"""The symbol namespaces a livepatch module imports: from Module.symvers and the units' objects."""

import pytest
from verify_build import compile_c

from kgenv.build import skeleton
from kgenv.build.target import VMLINUX
from kgenv.errors import UserError

SYMVERS = (
    "0x1a2b3c4d\tcxl_bus_rescan\tvmlinux\tEXPORT_SYMBOL_GPL\tCXL\n"
    "0x2b3c4d5e\tusb_stor_ctrl_transfer\tdrivers/usb/storage/usb-storage\tEXPORT_SYMBOL_GPL\tUSB_STORAGE\n"
    "0x3c4d5e6f\tdma_buf_put\tvmlinux\tEXPORT_SYMBOL_GPL\tDMA_BUF\n"
    "0x4d5e6f70\tcrypto_cipher_setkey\tvmlinux\tEXPORT_SYMBOL_GPL\tCRYPTO_INTERNAL\n"
    "0x5e6f7081\tprintk\tvmlinux\tEXPORT_SYMBOL\t\n"
    "0x6f708192\tseq_puts\tvmlinux\tEXPORT_SYMBOL\n"  # an older symvers: no namespace column
)

UNIT = """
void cxl_bus_rescan(void);
int usb_stor_ctrl_transfer(void *us, unsigned int pipe);
int printk(const char *fmt, ...);
static int dma_buf_put(int x) { return x + 1; }   /* a static of the same name: not the export */
int crypto_cipher_setkey(int k) { return k; }     /* defined here: the generated file may declare it */
int flush_store(int x)
{
    cxl_bus_rescan();
    printk("x");
    return usb_stor_ctrl_transfer(0, 0) + dma_buf_put(x);
}
"""


def test_symvers_namespaces():
    assert skeleton.symbol_namespaces(SYMVERS) == {
        "cxl_bus_rescan": "CXL",
        "usb_stor_ctrl_transfer": "USB_STORAGE",
        "dma_buf_put": "DMA_BUF",
        "crypto_cipher_setkey": "CRYPTO_INTERNAL",
    }


def test_imports_the_namespaces_of_referenced_and_defined_exports(tmp_path):
    obj = compile_c(tmp_path, "port.c", UNIT, ["-fno-inline"])
    names = skeleton.referenced_symbols([obj])
    assert {"cxl_bus_rescan", "usb_stor_ctrl_transfer", "crypto_cipher_setkey", "printk"} <= names
    assert "dma_buf_put" not in names  # local
    ns = skeleton.import_namespaces(skeleton.symbol_namespaces(SYMVERS), names)
    assert ns == ["CRYPTO_INTERNAL", "CXL", "USB_STORAGE"]
    text = skeleton.render_registration(
        "fix", "r", [skeleton.Replacement(VMLINUX, "flush_store", 0)], {VMLINUX: "6a" * 20}, namespaces=ns
    )
    assert "MODULE_IMPORT_NS(CRYPTO_INTERNAL);\nMODULE_IMPORT_NS(CXL);\nMODULE_IMPORT_NS(USB_STORAGE);\n" in text
    assert "@" not in text
    plain = skeleton.render_registration("fix", "r", [skeleton.Replacement(VMLINUX, "f", 0)], {VMLINUX: "6a" * 20})
    assert "MODULE_IMPORT_NS(" not in plain and "@" not in plain


def test_a_namespace_that_is_no_identifier_is_an_error():
    with pytest.raises(UserError, match="'CXL\\) x' is not a C identifier"):
        skeleton.import_namespaces({"f": "CXL) x"}, ["f"])
