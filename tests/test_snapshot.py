"""Docker tier: the env of Debian's current kernel — self-check, CLI, reproducible image ID, export/import."""

import json
import os
import subprocess
import sys

import pytest

from kgenv import manifest
from kgenv.env import lifecycle as envs
from kgenv.env.debian import snapshot_debian
from kgenv.env.fingerprint import read_config
from kgenv.errors import UserError
from kgenv.image.derive import remove_with_derived
from kgenv.progress import QUIET

pytestmark = [pytest.mark.archive, pytest.mark.docker]


def kgenv(*args, env=None):
    return subprocess.run(
        [sys.executable, "-m", "kgenv", *args], capture_output=True, text=True, env={**os.environ, **(env or {})}
    )


def test_env_records_the_shipped_toolchain(env, debian_kernel):
    config = read_config(debian_kernel.config)
    assert env.fingerprint["cc_version_text"] == config["CC_VERSION_TEXT"]
    assert env.kernel.release == debian_kernel.abi and len(env.kernel.build_id) == 40
    assert env.toolchain[env.make["CC"]] in env.fingerprint["cc_version_text"]
    assert env.packages[env.make["CC"]] == env.toolchain[env.make["CC"]]
    assert env.files["vmlinux"].resolve() == debian_kernel.vmlinux
    assert env.image.size > 100_000_000


def test_self_check_passes(env, docker_rt):
    checks = envs.verify_image(docker_rt, env, QUIET)
    assert [c.name for c in checks if not c.ok] == []
    assert {c.name for c in checks} == {"compiler", "comment", "binutils", "pahole", "config"}


def test_cli_list_show_verify(env):
    r = kgenv("envs", "list", "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["envs"][env.name]["image"] == env.image.id
    shown = json.loads(kgenv("envs", "show", env.name).stdout)
    assert shown["kernel"]["release"] == env.kernel.release
    assert all(
        not isinstance(v, dict) for section in shown.values() if isinstance(section, dict) for v in section.values()
    )  # two levels deep
    r = kgenv("envs", "verify", env.name, "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    checks = json.loads(r.stdout)["checks"]
    assert set(checks) == {"compiler", "comment", "binutils", "pahole", "config"}
    assert all(c["ok"] for c in checks.values())


def test_existing_env_is_not_replaced(env, docker_rt):
    before = manifest.path_of(env.name).read_bytes()
    with pytest.raises(UserError, match="use --force"):
        snapshot_debian(f"{env.kernel.line}:{env.kernel.release}", docker_rt, env.name, False, QUIET)
    assert manifest.path_of(env.name).read_bytes() == before


def test_no_engine_is_a_one_line_error(env):
    r = kgenv("envs", "verify", env.name, env={"DOCKER_HOST": "unix:///nonexistent.sock"})
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and "no Docker engine answers" in r.stderr and "dockerd" in r.stderr


def test_bad_manifest_is_a_one_line_error(envs_dir):
    bad = envs_dir / "garbled.toml"
    bad.write_text("schema = 1\nname = [")
    r = kgenv("envs", "show", str(bad))
    bad.unlink()
    assert r.returncode == 2 and r.stderr.startswith(f"kgenv: {bad}: not valid TOML") and "Traceback" not in r.stderr


def test_same_manifest_gives_same_image_id(env, docker_rt):
    """Remove the image, re-create it from the manifest alone: the ID must come back."""
    remove_with_derived(docker_rt, env)
    assert docker_rt.image_id(env.image.id) is None
    assert envs.restore(docker_rt, env, QUIET) == env.image.id
    assert docker_rt.image_id(env.image.tag) == env.image.id


def test_export_import_round_trip(env, docker_rt, tmp_path, envs_dir):
    archive = tmp_path / "env.tar"
    assert kgenv("envs", "export", env.name, "-o", str(archive)).returncode == 0
    remove_with_derived(docker_rt, env)
    r = kgenv("envs", "import", str(archive))
    assert r.returncode == 2 and "use --force" in r.stderr  # the manifest exists: never silently replaced
    assert kgenv("envs", "import", str(archive), "--force").returncode == 0
    assert docker_rt.image_id(env.image.id) == env.image.id
    assert manifest.load(env.name) == env
