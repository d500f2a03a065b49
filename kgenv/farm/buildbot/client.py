"""The Buildbot engine: submit jobs to a master's force scheduler over HTTP, follow them, fetch artefacts."""

from __future__ import annotations

import base64
import json
import tarfile
import time
import urllib.error
import urllib.request
from datetime import UTC, datetime
from pathlib import Path

from kgenv import manifest
from kgenv.env import lifecycle as envs
from kgenv.errors import ToolError, UserError
from kgenv.farm.engine import Engine, Task
from kgenv.farm.store import Attempt
from kgenv.progress import QUIET
from kgenv.runtime.base import Runtime

BUILDER = "kgenv"
SCHEDULER = "kgenv"
# Buildbot's result codes for the build step, back to kgenv build's exit codes (0 built, 1 refused).
EXIT = {0: 0, 1: 1}


class Api:
    """The master's REST (data API v2) and JSON-RPC control endpoints."""

    def __init__(self, url: str, timeout: float = 60):
        self.base = url.rstrip("/") + "/api/v2/"
        self.timeout = timeout
        self._rpc_id = 0

    def get(self, path: str) -> dict:
        return json.loads(self._open(urllib.request.Request(self.base + path)))

    def raw(self, path: str) -> bytes:
        return self._open(urllib.request.Request(self.base + path))

    def control(self, path: str, method: str, **params):
        self._rpc_id += 1
        body = json.dumps({"jsonrpc": "2.0", "method": method, "id": self._rpc_id, "params": params}).encode()
        req = urllib.request.Request(self.base + path, body, {"Content-Type": "application/json"})
        reply = json.loads(self._open(req))
        if "error" in reply:
            raise ToolError(f"{self.base}{path}: {method}: {reply['error'].get('message', reply['error'])}")
        return reply.get("result")

    def _open(self, req) -> bytes:
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as r:
                return r.read()
        except urllib.error.HTTPError as e:
            detail = e.read().decode(errors="replace")[:300]
            raise ToolError(f"{req.full_url}: HTTP {e.code}: {detail}") from None
        except (urllib.error.URLError, OSError) as e:
            raise ToolError(f"{req.full_url}: no Buildbot master answers ({e})") from None


def fetch(url: str, dest: Path | None = None, timeout: float = 600) -> bytes | None:
    """GET url (into dest when given); None on 404."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            if dest is None:
                return r.read()
            with open(dest, "wb") as f:
                while chunk := r.read(1 << 20):
                    f.write(chunk)
            return b""
    except urllib.error.HTTPError as e:
        if e.code == 404:
            return None
        raise ToolError(f"{url}: HTTP {e.code}") from None
    except (urllib.error.URLError, OSError) as e:
        raise ToolError(f"{url}: {e}") from None


def exists(url: str) -> bool:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=60):
            return True
    except urllib.error.HTTPError as e:
        if e.code == 404:
            return False
        raise ToolError(f"{url}: HTTP {e.code}") from None
    except (urllib.error.URLError, OSError) as e:
        raise ToolError(f"{url}: {e}") from None


class BuildbotEngine(Engine):
    """One force-scheduled build per task; the workers' count bounds parallelism."""

    name = "buildbot"

    def __init__(self, master_url: str, master_envs: Path | None = None, rt: Runtime | None = None, poll: float = 1.0):
        self.api = Api(master_url)
        self.master_url = master_url
        self.master_envs = Path(master_envs) if master_envs else None
        self.rt = rt
        self.poll = poll

    def execute(self, tasks, finished, progress=QUIET):
        if not tasks:
            return
        builderid, artifacts = self._discover()
        self._stage_envs(sorted({t.job.kernel for t in tasks}), artifacts, progress)
        pending: dict[int, Task] = {}
        try:
            for t in tasks:
                pending[self._submit(t, builderid)] = t
                progress.step(f"submitted {t.job.id}")
            while pending:
                for brid, task in list(pending.items()):
                    if self.api.get(f"buildrequests/{brid}")["buildrequests"][0]["complete"]:
                        finished(task, self._collect(brid, task, artifacts))
                        del pending[brid]
                if pending:
                    progress.tick(f"{len(pending)} jobs queued or running on {self.master_url}")
                    time.sleep(self.poll)
        finally:
            if pending:
                self._cancel(list(pending))

    # -- submit ------------------------------------------------------------------------------

    def _discover(self) -> tuple[int, str]:
        builders = self.api.get(f"builders?name={BUILDER}")["builders"]
        if not builders:
            raise UserError(f"{self.master_url}: no builder {BUILDER!r} (use a config from kgenv farm buildbot-config)")
        sched = self.api.get(f"forceschedulers/{SCHEDULER}")["forceschedulers"]
        fields = _fields(sched[0]["all_fields"]) if sched else {}
        url = fields.get("kgenv_artifacts", {}).get("default")
        if not url:
            raise UserError(f"{self.master_url}: force scheduler {SCHEDULER!r} names no kgenv_artifacts store")
        return builders[0]["builderid"], url.rstrip("/") + "/"

    def _stage_envs(self, names: list[str], artifacts: str, progress) -> None:
        """Each env's image must reach workers as an export archive named by image ID."""
        for name in names:
            m = manifest.load(name)
            hexid = m.image.id.removeprefix("sha256:")
            if exists(f"{artifacts}envs/{hexid}.tar"):
                continue
            if self.master_envs is None:
                # Workers that already hold the env need no archive; one that lacks it fails its job
                # with this in its log (the env-download step).
                progress.step(
                    f"note: the master has no envs/{hexid}.tar for {name}; workers without "
                    f"the env will fail (pass --master-envs DIR to export it there)"
                )
                continue
            progress.step(f"export {name} to {self.master_envs}")
            envs.export(self._runtime(), m, self.master_envs / f"{hexid}.tar")

    def _runtime(self) -> Runtime:
        if self.rt is None:
            from kgenv.runtime.docker import runtime

            self.rt = runtime()
        return self.rt

    def _submit(self, t: Task, builderid: int) -> int:
        job, fix = t.job, t.job.fix
        props = {
            "kgenv_key": job.key,
            "kgenv_env": job.kernel,
            "kgenv_image": job.image_id,
            "kgenv_image_hex": job.image_id.removeprefix("sha256:"),
            "kgenv_fix": fix.name,
            "kgenv_boot": "1" if job.boot_test else "0",
            "kgenv_tus": " ".join(fix.tus),
            "kgenv_diff": _b64(fix.diff),
            "kgenv_check": _b64(fix.check) if job.boot_test and fix.check else "",
            "reason": f"kgenv farm {job.id}",
        }
        result = self.api.control(f"forceschedulers/{SCHEDULER}", "force", builderid=builderid, **props)
        return int(next(iter(result[1].values())))

    # -- collect -----------------------------------------------------------------------------

    def _collect(self, brid: int, t: Task, artifacts: str) -> Attempt:
        """The finished build's exit code, stdio log and OUTDIR tarball, in the task's work dir."""
        t.work.mkdir(parents=True, exist_ok=True)
        builds = self.api.get(f"buildrequests/{brid}/builds")["builds"]
        if not builds:
            t.log.write_text("buildbot: the build request finished without a build (cancelled)\n")
            return Attempt(2, "", self.name, 0.0, _iso(time.time()))
        b = builds[-1]
        worker = self.api.get(f"workers/{b['workerid']}")["workers"][0]["name"]
        steps = {s["name"]: s for s in self.api.get(f"builds/{b['buildid']}/steps")["steps"]}
        build = steps.get("build") or {}
        ran = build.get("started_at") is not None
        code = EXIT.get(build["results"], 2) if ran else 2
        logs = [build] if ran else [s for s in steps.values() if s.get("results") not in (None, 0, 3)]
        t.log.write_bytes(b"".join(self._log(s, not ran) for s in logs))
        tar = t.work / "out.tar"
        url = f"{artifacts}jobs/{t.job.key}/{b['number']}.tar"
        if fetch(url, tar) is None:
            _note(t.log, f"buildbot: no artefact at {url}")
        elif problem := extract_artefacts(tar, t.out):
            _note(t.log, f"buildbot: {url}: {problem}")
        seconds = float((b.get("complete_at") or time.time()) - (b.get("started_at") or time.time()))
        return Attempt(code, worker, self.name, round(seconds, 3), _iso(b.get("complete_at") or time.time()))

    def _log(self, step: dict, titled: bool) -> bytes:
        logs = self.api.get(f"steps/{step['stepid']}/logs")["logs"]
        body = "".join(log_text(self.api.get(f"logs/{lg['logid']}/contents")) for lg in logs if lg["slug"] == "stdio")
        head = f"--- buildbot step {step['name']}: {step.get('state_string', '')}\n" if titled else ""
        return (head + body).encode()

    def _cancel(self, brids: list[int]) -> None:
        """Ctrl-C: withdraw queued requests and stop running builds, best effort."""
        for brid in brids:
            try:
                for b in self.api.get(f"buildrequests/{brid}/builds")["builds"]:
                    if not b["complete"]:
                        self.api.control(f"builds/{b['buildid']}", "stop", reason="kgenv farm interrupted")
                self.api.control(f"buildrequests/{brid}", "cancel", reason="kgenv farm interrupted")
            except ToolError:
                continue


def log_text(contents: dict) -> str:
    """A stdio log without Buildbot's header block (it lists the worker's whole environment):
    the command line, the program's output, and its exit line."""
    lines = "".join(c["content"] for c in contents["logchunks"]).splitlines()
    headers = [ln[1:] for ln in lines if ln.startswith("h")]
    keep = headers[:1] + [ln[1:] for ln in lines if ln[:1] in ("o", "e")]
    keep += [h for h in headers if h.startswith("program finished")]
    return "".join(f"{ln}\n" for ln in keep)


def _fields(fields: list) -> dict:
    """Force-scheduler fields by name, nested groups flattened."""
    out = {}
    for f in fields:
        out[f.get("name", "")] = f
        out.update(_fields(f.get("fields") or []))
    return out


def _b64(path: Path) -> str:
    return base64.b64encode(Path(path).read_bytes()).decode()


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="seconds")


def extract_artefacts(tar: Path, dest: Path) -> str:
    """A worker's OUTDIR: regular files and directories only, nothing outside dest; '' or what went wrong."""
    dest.mkdir(parents=True, exist_ok=True)
    try:
        with tarfile.open(tar) as tf:
            members = [m for m in tf.getmembers() if m.isfile() or m.isdir()]
            tf.extractall(dest, members=members, filter="data")
    except (tarfile.TarError, OSError) as e:
        return f"unreadable job artefact ({str(e).splitlines()[0]})"
    finally:
        tar.unlink(missing_ok=True)
    return ""


def _note(log: Path, line: str) -> None:
    with open(log, "a") as f:
        f.write(line + "\n")
