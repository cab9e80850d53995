"""Render HTML pages in headless Chromium and check that every image loaded and is visible.

    python ci/browser_check.py page.html [...] [--screenshot out.png] [--chromium /usr/bin/chromium]

A copy of each page gets a small script that, on load, writes for every <img> [id, loaded, visible]
into a body attribute; Chromium's --dump-dom prints the resulting DOM. Exit status 1 if any page has
an image that did not load (naturalWidth 0) or one with an empty bounding box, or fewer images
than --min-images.
"""

from __future__ import annotations

import argparse
import html
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

CHECK_SCRIPT = """<script>
window.addEventListener('load', () => {
  const r = [...document.images].map(i => {
    const b = i.getBoundingClientRect(), s = getComputedStyle(i);
    return [i.id || i.alt, i.complete && i.naturalWidth > 0,
            b.width > 0 && b.height > 0 && s.visibility !== 'hidden' && s.display !== 'none'];
  });
  document.body.setAttribute('data-imgcheck', JSON.stringify(r));
});
</script>"""
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--hide-scrollbars", "--virtual-time-budget=10000"]


def find_chromium(explicit: str | None = None) -> str | None:
    if explicit:
        return explicit
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if path := shutil.which(name):
            return path
    return "/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None


def _chromium(chromium: str, args: list[str], url: str, timeout: float = 90) -> str:
    with tempfile.TemporaryDirectory() as profile:
        proc = subprocess.run([chromium, *FLAGS, f"--user-data-dir={profile}", *args, url],
                              capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"chromium exited {proc.returncode}: {proc.stderr[-2000:]}")
    return proc.stdout


def check_images(page: str | Path, chromium: str) -> list[list]:
    """[[id, loaded, visible], ...] for every <img> of ``page`` as rendered by headless Chromium."""
    page = Path(page).resolve()
    text = page.read_text(encoding="utf-8")
    i = text.lower().rfind("</body>")
    text = text[:i] + CHECK_SCRIPT + text[i:] if i >= 0 else text + CHECK_SCRIPT
    # the copy sits next to the page so relative references resolve the same way
    with tempfile.NamedTemporaryFile("w", suffix=".html", dir=page.parent, prefix=".imgcheck-",
                                     encoding="utf-8", delete=False) as f:
        f.write(text)
    try:
        dom = _chromium(chromium, ["--window-size=1280,4000", "--dump-dom"], Path(f.name).as_uri())
    finally:
        Path(f.name).unlink()
    m = re.search(r'data-imgcheck="([^"]*)"', dom)
    if not m:
        raise RuntimeError(f"{page}: check script did not run (no data-imgcheck attribute in the DOM)")
    return json.loads(html.unescape(m.group(1)))


def screenshot(page: str | Path, out_png: str | Path, chromium: str, size: str = "1280,4000") -> Path:
    out = Path(out_png).resolve()
    _chromium(chromium, [f"--window-size={size}", f"--screenshot={out}"], Path(page).resolve().as_uri())
    if not out.exists() or out.stat().st_size == 0:
        raise RuntimeError(f"no screenshot written to {out}")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("pages", nargs="+")
    ap.add_argument("--screenshot", help="PNG screenshot of the first page")
    ap.add_argument("--chromium", help="browser executable (default: chromium on PATH)")
    ap.add_argument("--min-images", type=int, default=0, help="fail pages with fewer images (default 0)")
    a = ap.parse_args(argv)
    chromium = find_chromium(a.chromium)
    if chromium is None:
        print("chromium not found (apt-get install -y chromium)", file=sys.stderr)
        return 2
    failed = False
    for page in a.pages:
        imgs = check_images(page, chromium)
        bad = [i for i in imgs if not (i[1] and i[2])]
        ok = len(imgs) >= a.min_images and not bad
        failed |= not ok
        print(f"{'OK  ' if ok else 'FAIL'} {page}: {len(imgs)} images"
              + (f", not loaded/visible: {bad}" if bad else "")
              + (f" (fewer than {a.min_images})" if len(imgs) < a.min_images else ""))
    if a.screenshot:
        print("screenshot:", screenshot(a.pages[0], a.screenshot, chromium))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
