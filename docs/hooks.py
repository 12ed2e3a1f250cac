"""MkDocs hooks: the CLI reference from the argument parser, and example files included verbatim.

Both are generated at build time, so the documentation cannot drift from the code or the
examples: ``<!-- mbdask-cli-help -->`` becomes ``python -m mbdask --help`` and each
command's help; ``<!-- include PATH -->`` becomes the file at PATH (relative to the
repository root). A missing file fails the build.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

MARKER = "<!-- mbdask-cli-help -->"
INCLUDE = re.compile(r"<!-- include (\S+) -->")
ROOT = Path(__file__).resolve().parent.parent


def _help_sections() -> str:
    from mbdask.cli import build_parser

    parser = build_parser()
    parts = ["## python -m mbdask", "", "```text", parser.format_help().rstrip(), "```", ""]
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, sub in commands.choices.items():
        parts += [f"## python -m mbdask {name}", "", "```text", sub.format_help().rstrip(), "```", ""]
    return "\n".join(parts)


def _include(match: re.Match) -> str:
    return (ROOT / match.group(1)).read_text().rstrip("\n")


def on_page_markdown(markdown: str, page, config, files) -> str:  # noqa: ARG001 (MkDocs hook signature)
    if MARKER in markdown:
        markdown = markdown.replace(MARKER, _help_sections())
    return INCLUDE.sub(_include, markdown)
