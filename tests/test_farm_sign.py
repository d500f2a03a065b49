"""Docker tier: signing built modules with a run-time key by the kernel's scripts/sign-file in the env image."""

import json
import struct
import subprocess

import pytest
from farm_helpers import OK_C, tiny_engine, write_plan

from kgenv.errors import UserError
from kgenv.farm import plan as plans
from kgenv.farm.run import Farm
from kgenv.farm.sign import MAGIC, SigningKey
from kgenv.farm.store import Store

pytestmark = [pytest.mark.archive, pytest.mark.docker]


@pytest.fixture(scope="module")
def key(tmp_path_factory):
    d = tmp_path_factory.mktemp("signing-key")
    subprocess.run(
        [
            "openssl",
            "req",
            "-new",
            "-nodes",
            "-utf8",
            "-sha256",
            "-days",
            "2",
            "-batch",
            "-x509",
            "-subj",
            "/CN=kgenv farm test key",
            "-newkey",
            "rsa:2048",
            "-keyout",
            str(d / "key.pem"),
            "-out",
            str(d / "cert.pem"),
        ],
        check=True,
        capture_output=True,
    )
    return SigningKey(d / "key.pem", d / "cert.pem")


def split_signature(signed: bytes) -> tuple[bytes, bytes]:
    """(module, PKCS#7 signature) from a module with the kernel's appended signature."""
    assert signed.endswith(MAGIC)
    # struct module_signature: algo, hash, id_type, signer_len, key_id_len, pad[3], be32 sig_len
    info = signed[-len(MAGIC) - 12 : -len(MAGIC)]
    id_type, sig_len = info[2], struct.unpack(">I", info[8:])[0]
    assert id_type == 2  # PKEY_ID_PKCS7
    end = len(signed) - len(MAGIC) - 12
    return signed[: end - sig_len], signed[end - sig_len : end]


def test_farm_signs_built_modules_and_the_key_stays_out(env, key, tmp_path, docker_rt):
    p = write_plan(tmp_path, [env.name], {"ok": (OK_C, "built"), "bad": ("int x = ;\n", "refused")})
    m = Farm(plans.load(p), tmp_path / "out", tiny_engine(), Store(tmp_path / "store"), docker_rt, signing=key).run()
    ok, bad = m.cell(env.name, "ok"), m.cell(env.name, "bad")
    assert ok.signed == f"{ok.dir}/signed/{ok.module}" and bad.signed == ""
    unsigned = (tmp_path / "out" / ok.dir / ok.module).read_bytes()
    signed = (tmp_path / "out" / ok.signed).read_bytes()
    module, sig = split_signature(signed)
    assert module == unsigned
    (tmp_path / "sig.der").write_bytes(sig)
    r = subprocess.run(
        [
            "openssl",
            "cms",
            "-verify",
            "-binary",
            "-inform",
            "DER",
            "-in",
            str(tmp_path / "sig.der"),
            "-content",
            str(tmp_path / "out" / ok.dir / ok.module),
            "-certfile",
            str(key.cert),
            "-CAfile",
            str(key.cert),
            "-purpose",
            "any",
            "-out",
            "/dev/null",
        ],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    info = json.loads((tmp_path / "out" / ok.dir / "signed" / "signature.json").read_text())["signature"]
    assert info["cert_sha256"] == key.cert_sha256 and info["module_sha256"] == ok.module_sha256
    # The private key is nowhere in OUTDIR or the store, in any form we wrote.
    secret = key.key.read_bytes()
    body = b"".join(ln for ln in secret.splitlines() if not ln.startswith(b"-----"))
    for f in [*(tmp_path / "out").rglob("*"), *(tmp_path / "store").rglob("*")]:
        if f.is_file():
            data = f.read_bytes()
            assert body[:64] not in data and str(key.key).encode() not in data, f


def test_signing_needs_both_files(tmp_path):
    with pytest.raises(UserError, match="no such file"):
        SigningKey(tmp_path / "nokey.pem", tmp_path / "nocert.pem")
