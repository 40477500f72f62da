"""The docs site: the tutorial's commands run as written, the CLI reference is generated
from the CLI itself, the README links the site. (`.ci/run` builds the site with
`mkdocs build --strict`.)"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
from pathlib import Path

from support import BIN, REPO

from nb2task.cli import build_parser

DOCS = REPO / "docs"
SKIP = "<!-- not run by CI"


def shell_blocks(page: Path) -> list[str]:
    """The ```bash blocks of a page that CI runs (not those marked as not run)."""
    text = page.read_text()
    blocks = []
    for match in re.finditer(r"(?P<before>[^\n]*)\n```bash\n(?P<body>.*?)```", text, re.DOTALL):
        if not match.group("before").startswith(SKIP):
            blocks.append(match.group("body"))
    return blocks


def test_the_tutorials_commands_run(tmp_path: Path) -> None:
    blocks = shell_blocks(DOCS / "tutorial.md")
    assert len(blocks) >= 5
    script = "set -euo pipefail\n" + "\n".join(blocks)
    proc = subprocess.run(
        ["bash", "-c", script],
        cwd=tmp_path,
        env={**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    folder = tmp_path / "ndvi"
    assert (folder / "local-output" / "ndvi.executed.html").exists()  # report
    assert (folder / "build" / "ndvi" / "Dockerfile").exists()  # build
    assert "2 case(s) passed" in proc.stdout  # test


def test_the_cli_reference_is_the_clis_help() -> None:
    spec = importlib.util.spec_from_file_location("docs_hooks", DOCS / "hooks.py")
    assert spec and spec.loader
    hooks = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hooks)
    page = hooks.on_page_markdown((DOCS / "cli.md").read_text(), None, None, None)
    assert hooks.MARKER not in page
    parser = build_parser()
    for name, command in hooks._commands(parser):
        assert f"### `nb2task {name}`" in page
        for action in command._actions:
            for option in action.option_strings:
                assert option in page, (name, option)
    assert "### `nb2task-task run`" in page


def test_the_readme_links_the_docs() -> None:
    readme = (REPO / "README.md").read_text()
    assert "(docs/index.md)" in readme
    assert "mkdocs serve" in readme
    nav = (REPO / "mkdocs.yml").read_text()
    for page in sorted(DOCS.glob("*.md")):
        assert f": {page.name}" in nav, f"{page.name} is not in mkdocs.yml's nav"
