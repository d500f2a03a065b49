# Buildbot master configuration for kgenv farm jobs, written by `kgenv farm buildbot-config`.
# Settings (ports, workers, commands, the artefact store) live in kgenv-farm.json beside this file.
#
# One builder, "kgenv", runs one (kernel, fix) job per build: it brings the env image to the
# worker if it lacks it (an `kgenv envs export` archive named by image ID, downloaded from the
# master), runs `kgenv build` exactly as the local engine does, and uploads OUTDIR as a tarball
# to the master's artefact store, which a small read-only web server hands to `kgenv farm run`.
# Jobs are submitted through the force scheduler "kgenv" over the master's HTTP API.

import base64
import json
import os

from buildbot.plugins import schedulers, steps, util, worker
from buildbot.process.results import FAILURE, SUCCESS, WARNINGS
from buildbot.util import service
from twisted.internet import defer, reactor
from twisted.web import resource, server, static

S = json.load(open(os.path.join(basedir, "kgenv-farm.json")))  # noqa: F821 (basedir: set by buildbot)
STORE = S["store"]
JOB = "job"  # the per-build directory on the worker, inside the builder's workdir
HEX64 = r"^[0-9a-f]{64}$"
B64 = r"^[A-Za-z0-9+/=]*$"
NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$"
BLOCK = 512 << 10  # file transfer chunk: the worker protocol refuses strings over 640 KiB


class ArtifactServer(service.BuildbotService):
    """Serves STORE (env archives, job tarballs) read-only, without directory listings."""

    name = "kgenv-artifacts"

    def checkConfig(self, port, interface, root):
        pass

    @defer.inlineCallbacks
    def reconfigService(self, port, interface, root):
        yield self._close()
        files = static.File(root)
        files.directoryListing = lambda: resource.ForbiddenResource()
        self._listener = reactor.listenTCP(port, server.Site(files), interface=interface)

    def stopService(self):
        d = self._close()
        d.addCallback(lambda _: super(ArtifactServer, self).stopService())
        return d

    def _close(self):
        listener, self._listener = getattr(self, "_listener", None), None
        return defer.maybeDeferred(listener.stopListening) if listener else defer.succeed(None)


def _b64(name):
    return util.Transform(lambda v: base64.b64decode(v or "").decode("utf-8", "surrogateescape"),
                          util.Property(name, default=""))


@util.renderer
def build_command(props):
    """`kgenv build` with the arguments the local engine gives it (kgenv.farm.job.Job.build_args)."""
    args = ["build", f"{JOB}/fix.diff", "--env", props["kgenv_env"], "--image", props["kgenv_image"],
            "-o", f"{JOB}/out", "--name", props["kgenv_fix"], "-j", str(S["cores"])]
    for tu in (props.getProperty("kgenv_tus") or "").split():
        args += ["--tu", tu]
    if props.getProperty("kgenv_boot") == "1":
        args.append("--boot-test")
        if props.getProperty("kgenv_check"):
            args += ["--check", f"{JOB}/check.sh"]
    return S["build"] + args


def _env_missing(step):
    return step.getProperty("kgenv_env_status") != "present"


def _param(name, regex, **kw):
    return util.StringParameter(name=name, regex=regex, **kw)


factory = util.BuildFactory([
    steps.RemoveDirectory(name="clean", dir=f"build/{JOB}"),
    steps.StringDownload(_b64("kgenv_diff"), workerdest=f"{JOB}/fix.diff", name="diff"),
    steps.StringDownload(_b64("kgenv_check"), workerdest=f"{JOB}/check.sh", name="check",
                         doStepIf=lambda step: bool(step.getProperty("kgenv_check"))),
    steps.SetPropertyFromCommand(
        name="env", property="kgenv_env_status", haltOnFailure=True,
        command=S["kgenv"] + ["farm", "worker-env", util.Property("kgenv_env"), "--image",
                              util.Property("kgenv_image")]),
    steps.FileDownload(name="env-download", doStepIf=_env_missing, haltOnFailure=True, blocksize=BLOCK,
                       mastersrc=util.Interpolate(os.path.join(STORE, "envs", "%(prop:kgenv_image_hex)s.tar")),
                       workerdest=f"{JOB}/env.tar"),
    steps.ShellCommand(name="env-import", doStepIf=_env_missing, haltOnFailure=True,
                       command=S["kgenv"] + ["farm", "worker-env", util.Property("kgenv_env"), "--image",
                                             util.Property("kgenv_image"), "--archive", f"{JOB}/env.tar"]),
    # The job's verdict: 0 built, 1 refused (a verdict, not a broken build), anything else an error.
    steps.ShellCommand(name="build", command=build_command, haltOnFailure=False, timeout=3600,
                       decodeRC={0: SUCCESS, 1: WARNINGS, 2: FAILURE}),
    # An empty tarball when kgenv build died before writing anything: the log then says why.
    steps.ShellCommand(name="pack", command=f"mkdir -p {JOB}/out && tar -cf {JOB}/out.tar -C {JOB}/out .",
                       alwaysRun=True, haltOnFailure=True),
    steps.FileUpload(name="upload", workersrc=f"{JOB}/out.tar", alwaysRun=True, blocksize=BLOCK,
                     masterdest=util.Interpolate(os.path.join(STORE, "jobs", "%(prop:kgenv_key)s",
                                                              "%(prop:buildnumber)s.tar"))),
    steps.RemoveDirectory(name="tidy", dir=f"build/{JOB}", alwaysRun=True),
])

c = BuildmasterConfig = {}
c["title"] = S["title"]
c["buildbotURL"] = S["www_url"]
c["www"] = {"port": f"tcp:{S['www_port']}:interface={S['bind']}", "plugins": {}}
c["protocols"] = {"pb": {"port": f"tcp:{S['pb_port']}:interface={S['bind']}"}}
c["db"] = {"db_url": "sqlite:///state.sqlite"}
c["workers"] = [worker.Worker(name, password, max_builds=1) for name, password in sorted(S["workers"].items())]
c["builders"] = [util.BuilderConfig(name="kgenv", workernames=sorted(S["workers"]), factory=factory,
                                    description="kgenv farm jobs: one (kernel, fix) per build")]
# Every job is distinct work with its own inputs: never merge two requests into one build.
c["collapseRequests"] = False
c["schedulers"] = [schedulers.ForceScheduler(
    name="kgenv", builderNames=["kgenv"], buttonName="Run job",
    codebases=[util.CodebaseParameter(codebase="", hide=True)],
    properties=[
        _param("kgenv_key", HEX64, required=True), _param("kgenv_env", NAME, required=True),
        _param("kgenv_image", r"^sha256:[0-9a-f]{64}$", required=True), _param("kgenv_image_hex", HEX64, required=True),
        _param("kgenv_fix", r"^[A-Za-z0-9_-]{1,55}$", required=True), _param("kgenv_boot", r"^[01]$", default="0"),
        _param("kgenv_tus", r"^[A-Za-z0-9_./ -]*$", default=""),
        _param("kgenv_diff", B64, required=True, maxsize=8 << 20), _param("kgenv_check", B64, default="", maxsize=1 << 20),
        util.FixedParameter(name="kgenv_artifacts", default=S["artifacts_url"]),
    ])]
c["services"] = [ArtifactServer(port=S["artifacts_port"], interface=S["bind"], root=STORE)]
c["buildbotNetUsageData"] = None
