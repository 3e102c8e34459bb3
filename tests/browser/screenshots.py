"""Write docs/widget-desktop.png and docs/widget-phone.png.

    python -m tests.browser.screenshots

Runs the screenshot tests against the real stack (PostgreSQL and Redis from
DATABASE_URL / REDIS_URL, or embedded ones, as for the rest of the suite) with
SUPPORTBOT_SCREENSHOTS=1, which makes them write into docs/.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def main() -> int:
    os.environ["SUPPORTBOT_SCREENSHOTS"] = "1"
    os.chdir(ROOT)
    return pytest.main(
        ["-q", "-c", str(ROOT / "pyproject.toml"), "--rootdir", str(ROOT),
         str(Path(__file__).with_name("test_screenshots.py"))]
    )  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
