"""Representative conformations of the TICA states, as data for the pages' 3D viewer (:mod:`proseflow.report.viewer`).

- ``kabsch`` / ``superpose``: optimal rigid superposition (a proper rotation, no reflection) on chosen atoms
  (``heavy_atoms``).
- ``pdb_text``: PDB text of one configuration in a topology's atom order (that of
  ``results/structures/{seq}.pdb``).
- ``tica_states``: the k-means states of the reference TICA map (the clustering of
  ``evaluation.metrics.kmeans_jsd``, fitted on the reference frames the metrics use) and, per state, each
  source's population and the member nearest the state's centre. ``state_viewer`` turns them into viewer
  data: one scene per state, the representatives superposed on heavy atoms (every reference representative
  on the first state's, the others on their state's reference representative), coloured by source.
- ``system_conformations`` (a per-system page: MD vs the SNIS-resampled set) and ``budget_conformations`` (the
  budget page: reference MD, short MD and flow at the map budget) build the sources from the artefacts.

Viewer data is plain JSON: {"scenes": [{"label", "info", "models": [{"name", "color", "pdb"}]}],
"columns": [...], "rows": [[...]]}, one table row per scene; ``merge_viewer_data`` joins several systems.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

COLORS = {"md": "#1f77b4", "sampler": "#ff7f0e", "reference": "#7f7f7f"}  # MD blue, flow orange (budget page)


# ---------------------------------------------------------------- geometry
def kabsch(mobile: np.ndarray, target: np.ndarray, weights: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Rotation R [3, 3] (det +1) and translation t [3] minimising sum_i w_i |R x_i + t - y_i|^2 over points
    x = ``mobile`` [n, 3], y = ``target`` [n, 3]; apply as ``x @ R.T + t``."""
    x = np.asarray(mobile, dtype=np.float64)
    y = np.asarray(target, dtype=np.float64)
    w = np.full(len(x), 1.0 / len(x)) if weights is None else np.asarray(weights, dtype=np.float64) / np.sum(weights)
    cx, cy = w @ x, w @ y
    h = (x - cx).T @ ((y - cy) * w[:, None])  # covariance: sum w x y^T
    u, _, vt = np.linalg.svd(h)
    d = np.sign(np.linalg.det(vt.T @ u.T)) or 1.0
    r = vt.T @ np.diag([1.0, 1.0, d]) @ u.T
    return r, cy - r @ cx


def superpose(mobile: np.ndarray, target: np.ndarray, atoms: np.ndarray | None = None) -> tuple[np.ndarray, float]:
    """``mobile`` [N, 3] moved onto ``target`` [N, 3] by the rigid motion that fits ``atoms`` (all if None) best;
    returns the moved coordinates and the RMSD over ``atoms`` after the fit (same units)."""
    atoms = np.arange(len(mobile)) if atoms is None else np.asarray(atoms)
    r, t = kabsch(mobile[atoms], target[atoms])
    moved = np.asarray(mobile, dtype=np.float64) @ r.T + t
    rmsd = float(np.sqrt(np.mean(np.sum((moved[atoms] - np.asarray(target)[atoms]) ** 2, axis=1))))
    return moved, rmsd


def _mdtraj_topology(topology):
    import mdtraj

    return topology if isinstance(topology, mdtraj.Topology) else mdtraj.Topology.from_openmm(topology)


def heavy_atoms(topology) -> np.ndarray:
    """Indices of the atoms that are not hydrogen (OpenMM or mdtraj topology)."""
    top = _mdtraj_topology(topology)
    return np.array([a.index for a in top.atoms if a.element is None or a.element.symbol != "H"], dtype=np.int64)


def pdb_text(topology, positions_nm: np.ndarray, remarks: tuple[str, ...] = ()) -> str:
    """PDB text (ATOM records, one chain "A", coordinates in Angstrom) of ``positions_nm`` [N, 3] in the atom
    order of ``topology`` (OpenMM or mdtraj); ends with TER (no END, so models can be concatenated)."""
    top = _mdtraj_topology(topology)
    xyz = np.asarray(positions_nm, dtype=np.float64).reshape(top.n_atoms, 3) * 10.0
    lines = [f"REMARK   1 {r}"[:80] for r in remarks]
    for atom, (x, y, z) in zip(top.atoms, xyz, strict=True):
        element = atom.element.symbol if atom.element is not None else ""
        name = atom.name if len(atom.name) >= 4 or len(element) == 2 else f" {atom.name}"
        res = atom.residue
        lines.append(f"ATOM  {(atom.index + 1) % 100000:5d} {name:<4s} {res.name:>3s} A{res.resSeq % 10000:4d}    "
                     f"{x:8.3f}{y:8.3f}{z:8.3f}  1.00  0.00          {element:>2s}")
    lines.append("TER")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- states of the TICA map
@dataclass
class Source:
    """A set of configurations placed on the TICA map: MD frames or a sampler's samples."""

    name: str
    tica: np.ndarray  # [n, 2] TICA coordinates of each member
    weights: np.ndarray | None = None  # population weights (None: equal); zero or non-finite: not counted
    candidates: np.ndarray | None = None  # members that may represent a state (None: all), e.g. a resampled set
    positions: Callable[[np.ndarray], np.ndarray] | None = None  # sorted member indices -> [m, N, 3] nm; None:
    # population only, no structure
    ids: np.ndarray | None = None  # member -> the number reported for it (an MD frame, a proposal); None: itself
    color: str = COLORS["sampler"]
    energy_kT: np.ndarray | None = None  # [n] each member's energy: the state's median is reported (unweighted)


@dataclass
class State:
    cluster: int  # k-means cluster index
    centre: np.ndarray  # [2]
    populations: dict[str, float]  # source -> fraction of its (weighted) members in this state
    representatives: dict[str, int | None] = field(default_factory=dict)  # source -> member nearest the centre
    # source (with energies) -> median energy of its members in this state (kT; None: no finite member there).
    # MD's and the proposals' side by side say where the flow's local geometry fails: a state whose proposals sit
    # far above MD's energy loses its weight under SNIS whatever its share of proposals.
    median_energy_kT: dict[str, float | None] = field(default_factory=dict)


def tica_states(sources: list[Source], k: int, seed: int) -> list[State]:
    """The k-means states of ``sources[0]`` (the MD reference; the clustering ``metrics.kmeans_jsd`` fits on it)
    that it visits, most populated first: each source's population and, for sources with positions, the
    candidate in the state nearest its centre (None if the source has no candidate there)."""
    from proseflow.evaluation.metrics import fit_kmeans

    model = fit_kmeans(sources[0].tica, k, seed)
    centres = np.asarray(model.cluster_centers, dtype=np.float64)
    labels, pops = {}, {}
    for s in sources:
        x = np.asarray(s.tica, dtype=np.float64)
        ok = np.isfinite(x).all(axis=1)
        w = np.ones(len(x)) if s.weights is None else np.nan_to_num(np.asarray(s.weights, dtype=np.float64),
                                                                     nan=0.0, posinf=0.0, neginf=0.0).clip(min=0)
        lab = np.full(len(x), -1)
        if ok.any():
            lab[ok] = model.transform(x[ok])
        labels[s.name] = lab
        w = np.where(ok, w, 0.0)
        pops[s.name] = np.bincount(lab[ok], weights=w[ok], minlength=len(centres)) / w.sum() if w.sum() > 0 \
            else np.zeros(len(centres))
    ref = sources[0].name
    order = [c for c in np.argsort(-pops[ref], kind="stable") if pops[ref][c] > 0]
    states = []
    for c in order:
        st = State(int(c), centres[c], {s.name: float(pops[s.name][c]) for s in sources})
        for s in sources:
            if s.energy_kT is not None:
                e = np.asarray(s.energy_kT, dtype=np.float64)[labels[s.name] == c]
                e = e[np.isfinite(e)]
                st.median_energy_kT[s.name] = float(np.median(e)) if len(e) else None
            if s.positions is None:
                continue
            cand = np.arange(len(s.tica)) if s.candidates is None else np.unique(np.asarray(s.candidates, dtype=int))
            cand = cand[labels[s.name][cand] == c]
            if len(cand):
                d = np.sum((np.asarray(s.tica, dtype=np.float64)[cand] - centres[c]) ** 2, axis=1)
                st.representatives[s.name] = int(cand[np.argmin(d)])
            else:
                st.representatives[s.name] = None
        states.append(st)
    return states


def _percent(x: float) -> str:
    return f"{100 * x:.1f}%"


def _kT(x: float | None) -> str:
    return "–" if x is None else f"{x:.1f}"


def state_viewer(topology, sources: list[Source], states: list[State]) -> tuple[dict, list[dict]]:
    """Viewer data (module docstring) and a JSON-able summary of ``states``: per state the populations, the
    representatives (their ids) and the heavy-atom RMSD of each to the state's reference representative (nm).

    ``sources[0]`` is the reference: its representatives are superposed on the first state's, every other
    source's on its state's reference representative (heavy atoms, ``superpose``)."""
    shown = [s for s in sources if s.positions is not None]
    coords = {}
    for s in shown:
        idx = sorted({st.representatives[s.name] for st in states} - {None})
        if idx:
            xyz = np.asarray(s.positions(np.asarray(idx)), dtype=np.float64)
            coords[s.name] = dict(zip(idx, xyz, strict=True))
    heavy = heavy_atoms(topology)
    ref = sources[0].name
    energetic = [s for s in sources if s.energy_kT is not None]
    anchor = None
    scenes, rows, summary = [], [], []
    for i, st in enumerate(states):
        models, rmsd = [], {}
        target = None
        for s in shown:
            j = st.representatives[s.name]
            if j is None:
                continue
            x = coords[s.name][j]
            if s.name == ref:
                if anchor is None:
                    anchor = x
                x, _ = superpose(x, anchor, heavy)
                target = x
            elif target is not None:
                x, rmsd[s.name] = superpose(x, target, heavy)
            models.append({"name": s.name, "color": s.color,
                           "pdb": pdb_text(topology, x, (f"state {i + 1}: {s.name} {_id(s, j)}",))})
        label = f"state {i + 1}"
        info = [f"{s.name} {_percent(st.populations[s.name])}" for s in sources]
        info += [f"{s.name}: no sample in this state" for s in shown if st.representatives.get(s.name) is None]
        info += [f"heavy-atom RMSD {name} to {ref}: {v:.3f} nm" for name, v in rmsd.items()]
        info += [f"{name} median energy {_kT(v)} kT" for name, v in st.median_energy_kT.items() if v is not None]
        scenes.append({"label": label, "info": "; ".join(info), "models": models})
        rows.append([str(i + 1), f"{st.centre[0]:.3g}, {st.centre[1]:.3g}",
                     *[_percent(st.populations[s.name]) for s in sources],
                     *[_id(s, st.representatives[s.name]) for s in shown],
                     *[f"{rmsd[s.name]:.3f}" if s.name in rmsd else "–" for s in shown[1:]],
                     *[_kT(st.median_energy_kT.get(s.name)) for s in energetic]])
        summary.append({"state": i + 1, "cluster": st.cluster, "centre": [float(v) for v in st.centre],
                        "population": dict(st.populations),
                        "representative": {s.name: _id_value(s, st.representatives[s.name]) for s in shown},
                        "rmsd_nm": rmsd, **({"median_energy_kT": dict(st.median_energy_kT)} if energetic else {})})
    columns = ["state", "TICA centre", *[f"{s.name} population" for s in sources],
               *[f"{s.name} shown" for s in shown], *[f"RMSD {s.name}–{ref} (nm)" for s in shown[1:]],
               *[f"{s.name} median E (kT)" for s in energetic]]
    return {"scenes": scenes, "columns": columns, "rows": rows}, summary


def _id_value(s: Source, j: int | None) -> int | None:
    if j is None:
        return None
    return int(s.ids[j]) if s.ids is not None else int(j)


def _id(s: Source, j: int | None) -> str:
    v = _id_value(s, j)
    return "–" if v is None else f"#{v}"


def merge_viewer_data(parts: dict[str, dict], key: str = "system") -> dict:
    """One viewer over several systems: scene labels prefixed with the part's name, a first column ``key``."""
    parts = {name: d for name, d in parts.items() if d and d.get("scenes")}
    if not parts:
        return {"scenes": [], "columns": [], "rows": []}
    columns = [key, *next(iter(parts.values()))["columns"]]
    scenes, rows = [], []
    for name, d in parts.items():
        scenes += [{**sc, "label": f"{name}: {sc['label']}"} for sc in d["scenes"]]
        rows += [[name, *r] for r in d["rows"]]
    return {"scenes": scenes, "columns": columns, "rows": rows}


# ---------------------------------------------------------------- the pages' states
def md_frames(md_path, frames: np.ndarray) -> np.ndarray:
    """Coordinates [m, N, 3] nm of the given frames of an MD trajectory file (read one by one, not the file)."""
    from proseflow.physics import trajectory_io

    uniq, inverse = np.unique(np.asarray(frames, dtype=np.int64), return_inverse=True)
    with trajectory_io.open_checked(md_path) as f:  # h5py reads a sorted, duplicate-free selection
        xyz = f["coordinates"][uniq]
    return xyz[inverse.ravel()]


def system_conformations(topology, md_path, reference_frames: np.ndarray, reference_tica: np.ndarray, snis: dict,
                  snis_tica: np.ndarray, k: int, seed: int, sampler: str = "SNIS",
                  reference_energy_kT: np.ndarray | None = None) -> tuple[dict, list[dict]]:
    """Viewer data and state summary of one system's page: per k-means state of the reference TICA map, the
    MD frame nearest the centre and the nearest sample of the SNIS-resampled set, with the MD population,
    the SNIS population (importance weights) and the raw proposals' share; given ``reference_energy_kT`` (and
    ``snis["energy_kT"]``), the median energy of MD's frames and of the proposals in each state.

    ``reference_frames``: the MD file's frame index of each row of ``reference_tica``; ``snis``: the arrays of
    a SNIS file (``positions_nm``, ``log_weights``, ``resampled_indices``); ``snis_tica``: TICA of its
    positions."""
    from proseflow.samplers.resampling import normalise_log_weights

    frames = np.asarray(reference_frames)
    log_w = np.asarray(snis["log_weights"], dtype=np.float64)
    weights = np.exp(normalise_log_weights(log_w)) if np.isfinite(log_w).any() else np.zeros(len(log_w))
    positions = snis["positions_nm"]
    sources = [
        Source("MD", reference_tica, positions=lambda idx: md_frames(md_path, frames[idx]), ids=frames,
               color=COLORS["md"], energy_kT=reference_energy_kT),
        Source(sampler, snis_tica, weights=weights, candidates=snis.get("resampled_indices"),
               positions=lambda idx: positions[idx], color=COLORS["sampler"]),
        Source("proposals", snis_tica, energy_kT=snis.get("energy_kT") if reference_energy_kT is not None else None),
    ]
    return state_viewer(topology, sources, tica_states(sources, k, seed))


def budget_conformations(topology, md_path, reference_frames: np.ndarray, reference_tica: np.ndarray, sets,
                  snis_positions: np.ndarray, k: int, seed: int) -> tuple[dict, list[dict]]:
    """Viewer data of the budget page (paper Figure 4 in 3D): per k-means state of the reference TICA map, the
    reference MD frame nearest the centre and the nearest member of the short MD and of the flow's resampled
    SNIS set at the map budget (``evaluation.budget.MapSets``), with each one's population."""
    frames = np.asarray(reference_frames)
    sources = [
        Source("MD reference", reference_tica, ids=frames, color=COLORS["reference"],
               positions=lambda idx: md_frames(md_path, frames[idx])),
        Source("MD at budget", sets.md_tica, ids=sets.md_frames, color=COLORS["md"],
               positions=lambda idx: md_frames(md_path, sets.md_frames[idx])),
        Source("flow at budget", sets.flow_tica, ids=sets.flow_index, color=COLORS["sampler"],
               positions=lambda idx: np.asarray(snis_positions)[sets.flow_index[idx]]),
    ]
    return state_viewer(topology, sources, tica_states(sources, k, seed))

