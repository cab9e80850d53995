"""Render HTML pages in headless Chromium and check that every image loaded and is visible.

    python ci/browser_check.py page.html [...] [--screenshot out.png] [--chromium /usr/bin/chromium]
                               [--viewer]

A copy of each page gets a small script that, on load, writes for every <img> [id, loaded, visible]
into a body attribute; Chromium's --dump-dom prints the resulting DOM. Exit status 1 if any page has
an image that did not load (naturalWidth 0) or one with an empty bounding box, or fewer images
than --min-images. With --viewer, every page must also show a working 3D viewer (``check_viewer``).

3D viewers (proseflow.report.viewer): ``check_viewer`` reports per viewer whether its WebGL canvas exists and its
size, and what it shows before and after the state selector is changed; ``viewer_screenshot`` photographs
the viewer's canvas (the page with everything but the viewer hidden, cropped to the canvas) and counts the
pixels that differ from the white background. Chromium runs with every host name unresolvable, so a page
that needs the network fails.
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
VIEWER_SCRIPT = """<script>
window.addEventListener('load', () => {
  const out = [];
  for (const [id, v] of Object.entries(window.proseflowViewers || {})) {
    const root = document.getElementById(id);
    const canvas = root.querySelector('.pf-3d canvas');
    const b = canvas ? canvas.getBoundingClientRect() : null;
    const r = {id, library: !!window.$3Dmol, canvas: !!canvas, viewer: !!v.viewer,
               message: root.querySelector('.pf-missing').textContent,
               rect: b ? [b.left, b.top, b.width, b.height] : null, scenes: v.data.scenes.length, shown: []};
    const select = root.querySelector('select.pf-state');
    for (const i of [1 % r.scenes, 0]) {  // change the selector, then back to the first state
      select.value = String(i);
      select.dispatchEvent(new Event('change'));
      const models = v.viewer ? v.viewer.getModelList() : [];
      r.shown.push({state: root.dataset.state, models: root.dataset.models, n_models: models.length,
                    atoms: models.map(m => m.selectedAtoms({}).map(a => [a.x, a.y, a.z].map(c => c.toFixed(2)).join(' ')).join(';'))});
    }
    out.push(r);
  }
  document.body.setAttribute('data-viewercheck', JSON.stringify(out));
});
</script>"""
ONLY_VIEWERS_CSS = "<style>body>*:not(.pf-viewer){display:none!important}</style>"
# --enable-unsafe-swiftshader: software WebGL for the 3D viewers (trusted local pages, no GPU);
# --host-resolver-rules: no host name resolves, so a page that loads anything from a network fails
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--hide-scrollbars", "--virtual-time-budget=10000",
         "--enable-unsafe-swiftshader", "--host-resolver-rules=MAP * ~NOTFOUND"]


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


def _with(text: str, head: str = "", body_end: str = "") -> str:
    """The page text with ``head`` added at the start of <head> and ``body_end`` before </body>."""
    if head:
        i = text.lower().find("<head>")
        text = text[:i + 6] + head + text[i + 6:] if i >= 0 else head + text
    if body_end:
        i = text.lower().rfind("</body>")
        text = text[:i] + body_end + text[i:] if i >= 0 else text + body_end
    return text


def _run_copy(page: Path, text: str, chromium: str, args: list[str]) -> str:
    """Chromium's output for a modified copy (``text``) of ``page``."""
    # the copy sits next to the page so relative references resolve the same way
    with tempfile.NamedTemporaryFile("w", suffix=".html", dir=page.parent, prefix=".imgcheck-",
                                     encoding="utf-8", delete=False) as f:
        f.write(text)
    try:
        return _chromium(chromium, args, Path(f.name).as_uri())
    finally:
        Path(f.name).unlink()


def _dom_attribute(dom: str, name: str, page) -> list:
    m = re.search(rf'{name}="([^"]*)"', dom)
    if not m:
        raise RuntimeError(f"{page}: check script did not run (no {name} attribute in the DOM)")
    return json.loads(html.unescape(m.group(1)))


def check_images(page: str | Path, chromium: str) -> list[list]:
    """[[id, loaded, visible], ...] for every <img> of ``page`` as rendered by headless Chromium."""
    page = Path(page).resolve()
    text = _with(page.read_text(encoding="utf-8"), body_end=CHECK_SCRIPT)
    dom = _run_copy(page, text, chromium, ["--window-size=1280,4000", "--dump-dom"])
    return _dom_attribute(dom, "data-imgcheck", page)


def check_viewer(page: str | Path, chromium: str, only_viewers: bool = False) -> list[dict]:
    """Per 3D viewer of ``page``: {id, library, canvas, viewer, rect [x, y, w, h] of the canvas, scenes, shown}
    where ``shown`` is what the viewer displays after selecting the second state, then the first: the state,
    the model names, the number of models and their atom coordinates. ``only_viewers``: the layout of
    ``viewer_screenshot`` (everything but the viewers hidden)."""
    page = Path(page).resolve()
    text = _with(page.read_text(encoding="utf-8"), ONLY_VIEWERS_CSS if only_viewers else "", VIEWER_SCRIPT)
    dom = _run_copy(page, text, chromium, ["--window-size=1280,1400", "--dump-dom"])
    return _dom_attribute(dom, "data-viewercheck", page)


def viewer_screenshot(page: str | Path, out_png: str | Path, chromium: str) -> tuple[Path, float]:
    """Screenshot of the first 3D viewer's canvas of ``page`` (PNG ``out_png``) and the fraction of its pixels
    that differ from the white background (0: nothing drawn)."""
    from matplotlib.image import imread

    page = Path(page).resolve()
    viewers = check_viewer(page, chromium, only_viewers=True)
    if not viewers or not viewers[0]["rect"]:
        raise RuntimeError(f"{page}: no 3D viewer canvas ({viewers})")
    x, y, w, h = (int(round(v)) for v in viewers[0]["rect"])
    full = Path(out_png).with_suffix(".page.png").resolve()
    text = _with(page.read_text(encoding="utf-8"), ONLY_VIEWERS_CSS)
    _run_copy(page, text, chromium, ["--window-size=1280,1400", f"--screenshot={full}"])
    pixels = imread(full)[y:y + h, x:x + w, :3]  # floats in [0, 1]
    full.unlink()
    if pixels.size == 0:
        raise RuntimeError(f"{page}: the viewer canvas {viewers[0]['rect']} lies outside the screenshot")
    from matplotlib.image import imsave

    out = Path(out_png).resolve()
    imsave(out, pixels)
    drawn = float(((1.0 - pixels) > 0.12).any(axis=2).mean())
    return out, drawn


def screenshot(page: str | Path, out_png: str | Path, chromium: str, size: str = "1280,4000") -> Path:
    out = Path(out_png).resolve()
    _chromium(chromium, [f"--window-size={size}", f"--screenshot={out}"], Path(page).resolve().as_uri())
    if not out.exists() or out.stat().st_size == 0:
        raise RuntimeError(f"no screenshot written to {out}")
    return out


def viewer_problems(page: str | Path, chromium: str) -> str:
    """"" if ``page`` has a 3D viewer whose canvas has a size, draws pixels and changes with the state selector;
    else what is wrong."""
    viewers = check_viewer(page, chromium)
    if not viewers:
        return "no 3D viewer"
    problems = []
    for v in viewers:
        if not (v["library"] and v["canvas"] and v["viewer"]):
            problems.append(f"{v['id']}: library {v['library']}, canvas {v['canvas']}, viewer {v['viewer']}")
        elif not (v["rect"][2] > 0 and v["rect"][3] > 0):
            problems.append(f"{v['id']}: canvas of size {v['rect'][2:]}")
        elif v["scenes"] > 1 and v["shown"][0] == v["shown"][1]:
            problems.append(f"{v['id']}: the state selector does not change the models")
    if not problems:
        with tempfile.TemporaryDirectory() as d:
            _, drawn = viewer_screenshot(page, Path(d) / "viewer.png", chromium)
        if drawn <= 0.001:
            problems.append(f"the canvas is blank ({drawn:.2%} of its pixels drawn)")
    return "; ".join(problems)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("pages", nargs="+")
    ap.add_argument("--screenshot", help="PNG screenshot of the first page")
    ap.add_argument("--chromium", help="browser executable (default: chromium on PATH)")
    ap.add_argument("--min-images", type=int, default=0, help="fail pages with fewer images (default 0)")
    ap.add_argument("--viewer", action="store_true", help="fail pages without a working 3D viewer")
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
        viewer_problem = viewer_problems(page, chromium) if a.viewer else ""
        ok = ok and not viewer_problem
        failed |= not ok
        print(f"{'OK  ' if ok else 'FAIL'} {page}: {len(imgs)} images"
              + (f", not loaded/visible: {bad}" if bad else "")
              + (f" (fewer than {a.min_images})" if len(imgs) < a.min_images else "")
              + (f"; 3D viewer: {viewer_problem}" if viewer_problem else "; 3D viewer OK" if a.viewer else ""))
    if a.screenshot:
        print("screenshot:", screenshot(a.pages[0], a.screenshot, chromium))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
