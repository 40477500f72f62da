"""Regenerate docs/pictures/failed-run-report.png: the HTML record of a failed run of the
NDVI template (a band that does not exist), as a browser shows it. Needs Chromium
(Debian: apt-get install chromium). Run: .venv/bin/python docs/pictures/make_pictures.py"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        nb2task = str(BIN / "nb2task")
        subprocess.run([nb2task, "new", "ndvi", "--template", "ndvi"], cwd=work, check=True)
        subprocess.run(
            [nb2task, "run", "ndvi/ndvi.ipynb", "ndvi/ndvi.payload.json", "--local",
             "-p", "red_asset", "B04"],
            cwd=work,
        )  # fmt: skip
        html = work / "local-output" / "ndvi.executed.html"
        browser = shutil.which("chromium") or shutil.which("chromium-browser")
        if browser is None:
            sys.exit("needs chromium")
        subprocess.run(
            [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
             "--window-size=1000,2250", f"--screenshot={HERE / 'failed-run-report.png'}",
             html.as_uri()],
            check=True,
        )  # fmt: skip


if __name__ == "__main__":
    main()
