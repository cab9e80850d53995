"""The pages' 3D viewer: representative conformations (:mod:`proseflow.evaluation.conformations`) in 3Dmol.js.

``viewer_section`` renders viewer data as a self-contained HTML section: a states table, a state selector,
a PDB download of the state shown and the 3D view. 3Dmol.js (npm package ``3dmol``, BSD-3-Clause; version and
sha256 pinned in ``3dmol.pin``, which the Makefile reads too) is embedded into the page, never loaded from a
network: ``make install`` fetches it with npm into ``<venv>/share/proseflow/``, and ``find_library`` finds it
there (or ``$PROSEFLOW_3DMOL``) or says why it is missing. Without it the section keeps the table and the
download and says why there is no 3D view.
"""

from __future__ import annotations

import hashlib
import html
import json
import os
import re
import sys
import tarfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

PIN_FILE = Path(__file__).with_name("3dmol.pin")
ENV_VAR = "PROSEFLOW_3DMOL"  # a 3Dmol.js file or an `npm pack` tarball to embed instead of the pinned one
MEMBER_JS = "package/build/3Dmol-min.js"
MEMBER_LICENSE = "package/LICENSE"


# ---------------------------------------------------------------- the JavaScript library
def pin() -> dict[str, str]:
    """The pinned version and sha256 of 3Dmol.js (``3dmol.pin``: ``KEY = VALUE`` lines, # comments)."""
    out = {}
    for line in PIN_FILE.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if "=" in line:
            k, v = line.split("=", 1)
            out[k.strip()] = v.strip()
    return out


@dataclass(frozen=True)
class Library:
    """3Dmol.js to embed (``js``), or why there is none (``reason``)."""

    js: str | None
    version: str
    origin: str  # what was embedded: "npm 3dmol@2.5.5, sha256 ..." or the override's path
    reason: str = ""
    license: str = ""

    @property
    def available(self) -> bool:
        return self.js is not None


def default_locations(version: str | None = None) -> list[Path]:
    """Where ``make install`` puts the pinned tarball: the running venv, then the repository's ``.venv``."""
    name = f"3dmol-{version or pin()['THREEDMOL_VERSION']}.tgz"
    repo_venv = Path(__file__).resolve().parents[3] / ".venv"
    return list(dict.fromkeys([Path(sys.prefix) / "share" / "proseflow" / name,
                               repo_venv / "share" / "proseflow" / name]))


def sha256_of(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@lru_cache(maxsize=8)
def _read(path: str, mtime_ns: int) -> tuple[str, str]:
    """(JavaScript, license text) of a 3Dmol.js file or an ``npm pack`` tarball of the 3dmol package."""
    if not path.endswith((".tgz", ".tar.gz")):
        return Path(path).read_text(encoding="utf-8"), ""
    with tarfile.open(path, "r:gz") as tar:
        js = tar.extractfile(MEMBER_JS).read().decode("utf-8")
        try:
            lic = tar.extractfile(MEMBER_LICENSE).read().decode("utf-8")
        except KeyError:
            lic = ""
    return js, lic


def find_library(environ: dict | None = None, locations: list[Path] | None = None) -> Library:
    """3Dmol.js for the pages: ``$PROSEFLOW_3DMOL`` (a .js file or an npm tarball, used as given), else the
    pinned tarball where ``make install`` puts it, checked against the pinned sha256."""
    environ = os.environ if environ is None else environ
    p = pin()
    version, expected = p["THREEDMOL_VERSION"], p["THREEDMOL_SHA256"]
    override = environ.get(ENV_VAR)
    if override:
        path = Path(override)
        if not path.is_file():
            return Library(None, version, override, f"{ENV_VAR}={override} is not a file")
        try:
            js, lic = _read(str(path), path.stat().st_mtime_ns)
        except (OSError, KeyError, tarfile.TarError, UnicodeDecodeError) as e:
            return Library(None, version, override, f"{ENV_VAR}={override} could not be read ({e})")
        return Library(js, "from " + ENV_VAR, f"{path.name} ({ENV_VAR}), sha256 {sha256_of(path)}", license=lic)
    locations = default_locations(version) if locations is None else locations
    for path in locations:
        if not path.is_file():
            continue
        digest = sha256_of(path)
        if digest != expected:
            return Library(None, version, str(path),
                           f"{path} has sha256 {digest}, not the pinned {expected} (delete it and run `make install`)")
        try:
            js, lic = _read(str(path), path.stat().st_mtime_ns)
        except (OSError, KeyError, tarfile.TarError, UnicodeDecodeError) as e:
            return Library(None, version, str(path), f"{path} could not be read ({e})")
        return Library(js, version, f"npm 3dmol@{version}, sha256 {digest}", license=lic)
    where = " or ".join(str(x) for x in locations)
    return Library(None, version, "", f"3Dmol.js {version} was not found ({where}). `make install` fetches it "
                                      f"with npm (Node.js); or set {ENV_VAR} to a 3Dmol.js file")


# ---------------------------------------------------------------- HTML
VIEWER_CSS = """.pf-viewer .pf-controls{margin:.4em 0}.pf-viewer .pf-controls>*{margin-right:.5em}
.pf-viewer .pf-3d{position:relative;width:100%;max-width:760px;height:460px;outline:1px solid #ccc}
.pf-viewer .pf-legend span{display:inline-block;width:.9em;height:.9em;margin:0 .3em 0 .8em;vertical-align:middle}
.pf-viewer tr.pf-sel td{background:#fff3d6}.pf-viewer tbody tr{cursor:pointer}
.pf-viewer .pf-missing{color:#a40;font-weight:bold}"""

VIEWER_JS = """(() => {
  const root = document.getElementById(%(id)s);
  const data = JSON.parse(root.querySelector('script.pf-data').textContent);
  const select = root.querySelector('select.pf-state'), info = root.querySelector('.pf-info');
  const rows = [...root.querySelectorAll('tbody tr')], box = root.querySelector('.pf-3d');
  const hydrogens = root.querySelector('input.pf-h'), missing = root.querySelector('.pf-missing');
  const n = data.scenes.length;
  let viewer = null, current = 0;
  if (box && window.$3Dmol) {
    try { viewer = $3Dmol.createViewer(box, {backgroundColor: 'white'}); } catch (e) { viewer = null; }
    if (!viewer) { missing.textContent = '3D view not shown: this browser could not start WebGL.'; box.remove(); }
  }
  function show(i) {
    current = ((i %% n) + n) %% n;
    const scene = data.scenes[current];
    select.value = String(current);
    info.textContent = scene.info;
    rows.forEach((r, j) => r.classList.toggle('pf-sel', j === current));
    if (viewer) {
      viewer.removeAllModels();
      for (const m of scene.models) {
        const model = viewer.addModel(m.pdb, 'pdb');
        model.setStyle({}, {stick: {color: m.color, radius: 0.15}});
        if (!hydrogens.checked) model.setStyle({elem: 'H'}, {});
      }
      viewer.zoomTo();
      viewer.zoom(1.3);
      viewer.render();
    }
    root.dataset.state = String(current);
    root.dataset.models = scene.models.map(m => m.name).join(',');
  }
  select.addEventListener('change', () => show(Number(select.value)));
  root.querySelector('.pf-prev').addEventListener('click', () => show(current - 1));
  root.querySelector('.pf-next').addEventListener('click', () => show(current + 1));
  hydrogens.addEventListener('change', () => show(current));
  rows.forEach((r, j) => r.addEventListener('click', () => show(j)));
  root.querySelector('.pf-download').addEventListener('click', () => {
    const scene = data.scenes[current];
    const text = scene.models.map((m, j) => `MODEL     ${String(j + 1).padStart(4)}\\n${m.pdb}ENDMDL\\n`).join('') + 'END\\n';
    const a = document.createElement('a');
    a.href = URL.createObjectURL(new Blob([text], {type: 'chemical/x-pdb'}));
    a.download = `${root.dataset.name}_${scene.label.replace(/[^A-Za-z0-9]+/g, '_')}.pdb`;
    document.body.appendChild(a); a.click(); a.remove();
  });
  if (n) show(0);
  (window.proseflowViewers = window.proseflowViewers || {})[root.id] = {viewer, show, data};
})();"""


def _script_safe(text: str) -> str:
    """Text that cannot end the <script> element it sits in."""
    return re.sub(r"</(script)", r"<\\/\1", text, flags=re.I)


def library_script(library: Library) -> str:
    """The <script> element of the embedded library (license kept, as BSD-3-Clause asks); "" when missing."""
    if not library.available:
        return ""
    notice = f"3Dmol.js, embedded by proseflow ({library.origin}).\n{library.license}".replace("*/", "* /")
    return f"<script>/*!\n{_script_safe(notice)}\n*/\n{_script_safe(library.js)}</script>"


def viewer_section(data: dict, *, heading: str, caption: str, section_id: str = "viewer",
                   name: str = "structures", library: Library | None = None, include_library: bool = True) -> str:
    """HTML of one viewer (``data``: module docstring): heading, caption, states table, state selector and the
    3D view; the library embedded once per page (``include_library``). Text arguments are HTML."""
    library = find_library() if library is None else library
    esc = html.escape
    if not data.get("scenes"):
        return (f'<section class="pf-viewer" id="{esc(section_id)}-section"><h2 id="{esc(section_id)}">{heading}'
                f"</h2><p>No states to show.</p></section>")
    legend = {}
    for sc in data["scenes"]:
        for m in sc["models"]:
            legend.setdefault(m["name"], m["color"])
    head = "".join(f"<th>{esc(c)}</th>" for c in data["columns"])
    body = "".join("<tr>" + "".join(f"<td>{esc(str(v))}</td>" for v in r) + "</tr>" for r in data["rows"])
    options = "".join(f'<option value="{i}">{esc(sc["label"])}</option>' for i, sc in enumerate(data["scenes"]))
    if library.available:
        view = '<div class="pf-3d"></div>'
        missing = ""
        origin = f"<p class='small'>3D view: 3Dmol.js ({esc(library.origin)}), embedded in this page.</p>"
    else:
        view = ""
        missing = f"3D view not shown: {esc(library.reason)}."
        origin = ""
    payload = json.dumps({"scenes": data["scenes"]}, separators=(",", ":"))
    return "\n".join([
        f'<section class="pf-viewer" id="{esc(section_id)}-section" data-name="{esc(name)}">',
        f'<style>{VIEWER_CSS}</style>',
        f'<h2 id="{esc(section_id)}">{heading}</h2>',
        f"<p class='small'>{caption}</p>",
        f'<p class="pf-missing">{missing}</p>',
        '<div class="pf-controls"><label>State <select class="pf-state">' + options + "</select></label>"
        '<button type="button" class="pf-prev">&larr;</button><button type="button" class="pf-next">&rarr;</button>'
        '<label><input type="checkbox" class="pf-h"> hydrogens</label>'
        '<button type="button" class="pf-download">download PDB of this state</button>'
        '<span class="pf-legend">' + "".join(f'<span style="background:{esc(c)}"></span>{esc(n)}'
                                             for n, c in legend.items()) + "</span></div>",
        '<p class="pf-info"></p>',
        view,
        origin,
        f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>',
        f'<script type="application/json" class="pf-data">{_script_safe(payload)}</script>',
        library_script(library) if include_library else "",
        f"<script>{VIEWER_JS % {'id': json.dumps(section_id + '-section')}}</script>",
        "</section>",
    ])


SYSTEM_CAPTION = (
    "Representative conformations of the states of the TICA map: the k-means states of the reference MD's "
    "first two TICA components (the clustering of TICA-JSD, fitted on the reference frames), most populated "
    "first. Per state: the MD frame nearest the state's centre (blue) and the sample of the SNIS-resampled set "
    "nearest it (orange), superposed on heavy atoms (the MD frames on the first state's). Populations: the MD "
    "frames', the SNIS importance-weighted samples', and the raw (unweighted) proposals' shares. Numbers in the "
    "table: MD frame and proposal indices (0-based) in results/md/ and the sample set; drag to rotate, scroll "
    "to zoom.")


BUDGET_CAPTION = (
    "The states each sampler found at equal cost (paper Figure 4, in 3D): the k-means states of the reference "
    "MD's TICA map (as on the system pages), most populated first. Per state: the reference MD frame nearest "
    "the state's centre (grey), and the frame of the short MD (blue) and the sample of the flow's resampled "
    "SNIS set (orange) nearest it at the map budget, superposed on the reference frame (heavy atoms). "
    "Populations: each set's share of its members in the state; a state a sampler did not reach shows without "
    "its structure. Numbers in the table: MD frame and proposal indices (0-based).")
