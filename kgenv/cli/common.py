"""What several commands share: progress for --json/-v and one-line or JSON output."""

import json
from typing import Any

import click

from kgenv.progress import Progress


def progress_for(as_json: bool, verbose: bool = False) -> Progress:
    """Progress on stderr, silenced when stdout carries data unless -v asks for it."""
    return Progress(quiet=as_json and not verbose)


def emit(data: dict[str, Any], as_json: bool, line: str) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=True) if as_json else line)
