"""Render a report.html with headless Chromium and check the screenshot is not blank.

    .venv/bin/python scripts/check_report_renders.py studies/demo/report.html [--out shot.png]

Prints the PNG's path. Exits non-zero when Chromium fails, or the PNG is missing or
blank (a page that failed to render is one flat colour), so a broken report fails CI
rather than being noticed by a reader.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from PIL import Image, ImageStat

CHROMIUM = "/usr/bin/chromium"
TIMEOUT_SECONDS = 120
MIN_INK_FRACTION = 0.005
"""A rendered report has text and figures; less non-background area than this is blank."""


def screenshot(report: Path, out: Path, window: str, chromium: str = CHROMIUM) -> subprocess.CompletedProcess:
    command = [
        chromium,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--hide-scrollbars",
        f"--screenshot={out}",
        f"--window-size={window}",
        report.resolve().as_uri(),
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT_SECONDS)


def blank_reason(png: Path) -> str | None:
    """Why the screenshot looks blank, or None when it shows something."""
    if not png.exists() or png.stat().st_size == 0:
        return f"{png} is missing or empty"
    with Image.open(png) as image:
        grey = image.convert("L")
        if ImageStat.Stat(grey).stddev[0] == 0:
            return f"{png} is one flat colour"
        background = max(grey.getcolors(maxcolors=256 * 256 * 256) or [(0, 255)])[1]
        histogram = grey.histogram()
        ink = 1 - histogram[background] / (grey.width * grey.height)
    if ink < MIN_INK_FRACTION:
        return f"{png} is almost blank ({ink:.2%} of pixels differ from the background)"
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("report", type=Path, help="the report.html to render")
    parser.add_argument("--out", type=Path, default=None, help="PNG to write (default: next to the report, .png)")
    parser.add_argument("--window-size", default="1200,4000", help="width,height in pixels")
    parser.add_argument("--chromium", default=CHROMIUM)
    args = parser.parse_args(argv)
    if not args.report.is_file():
        print(f"no such report: {args.report}", file=sys.stderr)
        return 2
    out = (args.out or args.report.with_suffix(".png")).resolve()
    out.unlink(missing_ok=True)
    try:
        done = screenshot(args.report, out, args.window_size, args.chromium)
    except (OSError, subprocess.TimeoutExpired) as error:
        print(f"chromium failed: {error}", file=sys.stderr)
        return 1
    if done.returncode != 0:
        print(f"chromium exited {done.returncode}:\n{done.stderr[-2000:]}", file=sys.stderr)
        return 1
    reason = blank_reason(out)
    if reason:
        print(reason, file=sys.stderr)
        return 1
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
