#!/usr/bin/env python3
"""A PNG of a report's "Data audit" section as Chromium draws it (headless, offline): the report's own
head (style, plotly.js) with only that section in <main>, screenshotted, then reduced to a palette PNG.

    python bench/audit_screenshot.py RUN/report.html docs/data_audit_section.png [--width 1100] [--height 1900]
"""

import argparse
import os
import subprocess
import tempfile

from PIL import Image

CHROMIUM = "/usr/bin/chromium"


def section_page(html: str) -> str:
    """The report with <main> holding only the Data audit section (from its <h2> to the next <h2>) and
    the report's plotly.js (inlined once, before the first plot)."""
    start = html.index('<h2 id="audit">')
    end = html.index("<h2", start + 1)
    head, _, _ = html.partition("<main>")
    bundle_start = html.rindex("<script>", 0, html.index("plotly.js v"))
    bundle = html[bundle_start:html.index("</script>", bundle_start) + len("</script>")]
    return f"{head}<main>\n{bundle}\n{html[start:end]}</main></body></html>"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("report")
    parser.add_argument("png")
    parser.add_argument("--width", type=int, default=1100)
    parser.add_argument("--height", type=int, default=1900)
    parser.add_argument("--colours", type=int, default=96)
    args = parser.parse_args()
    work = tempfile.mkdtemp()
    page = os.path.join(work, "audit.html")
    with open(args.report, encoding="utf-8") as handle, open(page, "w", encoding="utf-8") as out:
        out.write(section_page(handle.read()))
    shot = os.path.join(work, "shot.png")
    subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    "--no-first-run", "--disable-background-networking", "--disable-component-update",
                    f"--user-data-dir={os.path.join(work, 'profile')}", "--host-resolver-rules=MAP * ~NOTFOUND",
                    "--virtual-time-budget=20000", f"--window-size={args.width},{args.height}",
                    f"--screenshot={shot}", f"file://{page}"], check=True, capture_output=True, timeout=180)
    with Image.open(shot) as img:
        img.convert("RGB").quantize(colors=args.colours).save(args.png, optimize=True)
    print(args.png, os.path.getsize(args.png), "bytes")


if __name__ == "__main__":
    main()
