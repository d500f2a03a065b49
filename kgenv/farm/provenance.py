"""An in-toto Statement with a SLSA v1 provenance predicate for each built module."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

from kgenv.build import report as build_report
from kgenv.farm.job import REPORT, Job
from kgenv.farm.store import Attempt
from kgenv.fsutil import sha256_file
from kgenv.manifest import Manifest

STATEMENT = "https://in-toto.io/Statement/v1"
PREDICATE = "https://slsa.dev/provenance/v1"
BUILD_TYPE = "urn:kgenv:build:v1"
FILE = "provenance.intoto.json"


def _digest(sha256: str) -> dict[str, str]:
    return {"sha256": sha256.removeprefix("sha256:")}


def statement(job: Job, env: Manifest, outdir: Path, module: str, attempt: Attempt) -> dict:
    """Subject: the module; materials: env image, kernel source, config, the diff; builder: kgenv."""
    reproducer = build_report.load(outdir / REPORT).kgenv.reproducer
    finished = datetime.fromisoformat(attempt.finished)
    deps = [
        {
            "name": "env-image",
            "uri": f"docker-image-id:{env.image.id}",
            "digest": _digest(env.image.id),
            "annotations": {"env": env.name, "manifest_tag": env.image.tag},
        },
        {"name": env.kernel.source_package, "digest": _digest(env.kernel.source_sha256)},
        {
            "name": "kernel-config",
            "digest": _digest(env.kernel.config_sha256),
            "annotations": {"release": env.kernel.release, "build_id": env.kernel.build_id},
        },
        {"name": job.fix.diff.name, "digest": _digest(job.fix.diff_sha256)},
    ]
    if job.boot_test and job.fix.check:
        deps.append({"name": job.fix.check.name, "digest": _digest(job.fix.check_sha256)})
    return {
        "_type": STATEMENT,
        "subject": [{"name": module, "digest": _digest(sha256_file(outdir / module))}],
        "predicateType": PREDICATE,
        "predicate": {
            "buildDefinition": {
                "buildType": BUILD_TYPE,
                "externalParameters": {
                    "fix": job.fix.name,
                    "diff": job.fix.diff.name,
                    "env": job.kernel,
                    "boot_test": job.boot_test,
                },
                "internalParameters": {"kgenv": job.kgenv, "job_key": job.key},
                "resolvedDependencies": deps,
            },
            "runDetails": {
                "builder": {
                    "id": f"urn:kgenv:farm:{attempt.engine}",
                    "version": {"kgenv": job.kgenv, "reproducer": reproducer},
                },
                "metadata": {
                    "invocationId": f"{job.key}@{attempt.worker}",
                    "startedOn": _utc(finished - timedelta(seconds=attempt.seconds)),
                    "finishedOn": _utc(finished),
                },
                "byproducts": [{"name": REPORT, "digest": _digest(sha256_file(outdir / REPORT))}],
            },
        },
    }


def _utc(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")
