"""mkdocs hook: the CLI reference (docs/cli.md), generated from nb2task's own parsers, so
that it cannot drift from ``nb2task --help``."""

from __future__ import annotations

import argparse
import os
from typing import Any

MARKER = "<!-- cli-reference -->"
WIDTH = "100"  # argparse wraps help at $COLUMNS


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    """Replace the marker with the reference."""
    return markdown.replace(MARKER, cli_reference()) if MARKER in markdown else markdown


def cli_reference() -> str:
    """Every command of ``nb2task`` and ``nb2task-task``, with its ``--help``."""
    from nb2task.cli import build_parser, build_task_parser

    saved = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = WIDTH
    try:
        sections = []
        for program in (build_parser(), build_task_parser()):
            sections.append(f"## `{program.prog}`\n\n```text\n{program.format_help()}```\n")
            for name, command in _commands(program):
                sections.append(
                    f"### `{program.prog} {name}`\n\n```text\n{command.format_help()}```\n"
                )
        return "\n".join(sections)
    finally:
        if saved is None:
            os.environ.pop("COLUMNS", None)
        else:
            os.environ["COLUMNS"] = saved


def _commands(parser: argparse.ArgumentParser) -> list[tuple[str, argparse.ArgumentParser]]:
    for action in parser._actions:  # argparse keeps its subcommands here only
        if isinstance(action, argparse._SubParsersAction):
            return list(action.choices.items())
    return []
