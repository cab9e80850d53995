"""Why do importance weights collapse? Per-system diagnostics of a proposal against its reference MD.

Three views, each a plain dict with identifier keys (stable JSON, written under ``diagnostics`` in the
per-system JSON and shown on its page):

- :func:`energy_terms`: the potential energy split by force term (bonds, angles, torsions, nonbonded =
  Lennard-Jones + Coulomb, implicit_solvent), in kT: the MD reference's mean, the proposal's median and
  the SNIS-weighted mean. A proposal whose bond term sits tens of kT above the MD's cannot be reweighted.
- :func:`bond_deviation`: RMS deviation of bond lengths from the force field's equilibrium length, per
  bonded element pair (C-H, C-C, C-N, C-O, N-H, ...), for MD and for the proposal, and their ratio
  (1 for a proposal with MD-like bond geometry; >1 when the flow's bonds are too loose).
- :func:`weight_spread`: variance of the finite log weights, the share of the total weight held by the
  top 1% of samples, and the SNIS ESS under both centre-of-mass corrections (``chi``: the paper's;
  ``gaussian``: the exact one; see :func:`proseflow.flow.preprocess.proposal_log_prob_nm`).

Energies come from the batched PyTorch backend (:mod:`proseflow.physics.energy_torch`, equal to OpenMM's terms).
"""

from __future__ import annotations

import math

import numpy as np

from proseflow.samplers.config import PAPER_DROP_TOP_FRACTION
from proseflow.samplers.resampling import finite_stat, kish_ess, normalise_log_weights
from proseflow.samplers.snis import snis

TERM_KEYS = {
    "HarmonicBondForce": "bonds",
    "HarmonicAngleForce": "angles",
    "PeriodicTorsionForce": "torsions",
    "NonbondedForce": "nonbonded",
    "CustomGBForce": "implicit_solvent",
}
"""OpenMM force class -> diagnostic key (nonbonded = Lennard-Jones + Coulomb; implicit_solvent = GB-OBC1)."""

TOP_FRACTION = 0.01
COM_CORRECTIONS = ("chi", "gaussian")


# ----------------------------------------------------------------------------------------------- energies
def term_energies_kT(topology, positions_nm: np.ndarray, temperature_K: float, chunk_size: int = 1024
                     ) -> dict[str, np.ndarray]:
    """Per-term energies [n] in kT of configurations [n, N, 3] nm, keyed by :data:`TERM_KEYS` values."""
    import openmm
    import torch

    from proseflow.physics.energy_torch import TorchEnergy
    from proseflow.physics.system import create_system

    system = create_system(topology)
    keys = [TERM_KEYS[type(f).__name__] for f in system.getForces() if not isinstance(f, openmm.CMMotionRemover)]
    energy = TorchEnergy(system, temperature_K, dtype=torch.float64)
    out: dict[str, list[np.ndarray]] = {k: [] for k in keys}
    with torch.no_grad():
        for start in range(0, len(positions_nm), chunk_size):
            terms = energy.energy_terms_kJ(np.asarray(positions_nm[start : start + chunk_size], dtype=np.float64))
            for key, values in zip(keys, terms.values(), strict=True):
                out[key].append(values.cpu().numpy() / energy.kT_kJ_per_mol)
    return {k: np.concatenate(v) if v else np.zeros(0) for k, v in out.items()}


def _weighted_mean(x: np.ndarray, log_w: np.ndarray) -> float | None:
    ok = np.isfinite(log_w) & np.isfinite(x)
    if not ok.any():
        return None
    w = np.exp(log_w[ok] - log_w[ok].max())
    return float(np.sum(w * x[ok]) / w.sum())


def energy_terms(md_terms: dict[str, np.ndarray], proposal_terms: dict[str, np.ndarray],
                 log_weights: np.ndarray | None) -> dict[str, dict]:
    """{term: {md_mean_kT, proposal_median_kT, snis_mean_kT}} plus a ``total`` row (sum of the terms)."""
    keys = list(md_terms)
    md_terms = {**md_terms, "total": sum(md_terms[k] for k in keys)}
    proposal_terms = {**proposal_terms, "total": sum(proposal_terms[k] for k in keys)}
    out = {}
    for key in [*keys, "total"]:
        p = np.asarray(proposal_terms[key], dtype=np.float64)
        out[key] = {
            "md_mean_kT": finite_stat(np.asarray(md_terms[key], dtype=np.float64), np.mean),
            "proposal_median_kT": finite_stat(p, np.median),
            "snis_mean_kT": None if log_weights is None else _weighted_mean(p, np.asarray(log_weights, float)),
        }
    return out


# ----------------------------------------------------------------------------------------------- bonds
def _pair_key(a: str, b: str) -> str:
    """Element pair label, carbon first, hydrogen last, else alphabetical: C-H, C-N, N-H, O-H, C-S, ..."""
    order = sorted((a, b), key=lambda s: (s != "C", s == "H", s))
    return f"{order[0]}-{order[1]}"


def force_field_bonds(topology) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(atom pairs [M, 2], equilibrium lengths [M] nm, element-pair labels [M]) of the force field's bonds."""
    import openmm

    from proseflow.physics.system import create_system

    system = create_system(topology)
    force = next(f for f in system.getForces() if isinstance(f, openmm.HarmonicBondForce))
    rows = [force.getBondParameters(i) for i in range(force.getNumBonds())]
    pairs = np.array([[r[0], r[1]] for r in rows], dtype=np.int64).reshape(-1, 2)
    r0 = np.array([r[2].value_in_unit(openmm.unit.nanometer) for r in rows], dtype=np.float64)
    atoms = list(topology.atoms())
    labels = [_pair_key(atoms[i].element.symbol, atoms[j].element.symbol) for i, j in pairs]
    return pairs, r0, labels


def bond_lengths_nm(positions_nm: np.ndarray, pairs: np.ndarray) -> np.ndarray:
    x = np.asarray(positions_nm, dtype=np.float64)
    return np.linalg.norm(x[:, pairs[:, 1]] - x[:, pairs[:, 0]], axis=-1)


def bond_deviation(topology, md_positions_nm: np.ndarray, proposal_positions_nm: np.ndarray) -> dict[str, dict]:
    """{element pair: {n_bonds, md_rms_nm, proposal_rms_nm, ratio}}: RMS of (r - r0) over frames and bonds."""
    pairs, r0, labels = force_field_bonds(topology)
    dev_md = bond_lengths_nm(md_positions_nm, pairs) - r0
    dev_prop = bond_lengths_nm(proposal_positions_nm, pairs) - r0
    out = {}
    labels = np.asarray(labels)
    for key in sorted(set(labels.tolist()), key=lambda k: (-int((labels == k).sum()), k)):
        cols = labels == key
        md_rms = finite_stat(dev_md[:, cols].ravel(), lambda v: math.sqrt(np.mean(v**2)))
        prop_rms = finite_stat(dev_prop[:, cols].ravel(), lambda v: math.sqrt(np.mean(v**2)))
        ratio = prop_rms / md_rms if md_rms and prop_rms is not None else None
        out[key] = {"n_bonds": int(cols.sum()), "md_rms_nm": md_rms, "proposal_rms_nm": prop_rms, "ratio": ratio}
    return out


def force_field_angles(topology) -> tuple[np.ndarray, np.ndarray]:
    """(atom triples [M, 3], equilibrium angles [M] rad) of the force field's harmonic angles."""
    import openmm

    from proseflow.physics.system import create_system

    system = create_system(topology)  # kept alive while its force is read (a temporary would free it)
    force = next(f for f in system.getForces() if isinstance(f, openmm.HarmonicAngleForce))
    rows = [force.getAngleParameters(i) for i in range(force.getNumAngles())]
    triples = np.array([r[:3] for r in rows], dtype=np.int64).reshape(-1, 3)
    theta0 = np.array([r[3].value_in_unit(openmm.unit.radian) for r in rows], dtype=np.float64)
    return triples, theta0


def bond_angles_rad(positions_nm: np.ndarray, triples: np.ndarray) -> np.ndarray:
    """Angle i-j-k at the middle atom j, [T, M] rad."""
    x = np.asarray(positions_nm, dtype=np.float64)
    a, b = x[:, triples[:, 0]] - x[:, triples[:, 1]], x[:, triples[:, 2]] - x[:, triples[:, 1]]
    cos = (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))
    return np.arccos(np.clip(cos, -1.0, 1.0))


def angle_deviation(topology, md_positions_nm: np.ndarray, proposal_positions_nm: np.ndarray) -> dict:
    """{n_angles, md_rms_rad, proposal_rms_rad, ratio}: RMS of (theta - theta0) over frames and angles."""
    triples, theta0 = force_field_angles(topology)
    rms = [finite_stat((bond_angles_rad(x, triples) - theta0).ravel(), lambda v: math.sqrt(np.mean(v**2)))
           for x in (md_positions_nm, proposal_positions_nm)]  # fmt: skip
    ratio = rms[1] / rms[0] if rms[0] and rms[1] is not None else None
    return {"n_angles": len(triples), "md_rms_rad": rms[0], "proposal_rms_rad": rms[1], "ratio": ratio}


# ----------------------------------------------------------------------------------------------- weights
def switch_com_correction(log_q: np.ndarray, centroid_flow: np.ndarray, source: str, target: str) -> np.ndarray:
    """log q of the centred proposal under another centre-of-mass correction.

    Both corrections divide the flow's density by h(c) of the flow-space centroid c; as functions on R^3,
    chi_3(|c|) = 4 pi |c|^2 N(c; 0, I/N), so log q_gaussian = log q_chi + log(4 pi |c|^2).
    """
    for k in (source, target):
        if k not in COM_CORRECTIONS:
            raise ValueError(f"unknown centre-of-mass correction {k!r}; known: {COM_CORRECTIONS}")
    if source == target:
        return np.asarray(log_q, dtype=np.float64)
    with np.errstate(divide="ignore"):
        log_4pi_r2 = np.log(4 * np.pi * np.sum(np.asarray(centroid_flow, dtype=np.float64) ** 2, axis=-1))
    sign = 1.0 if source == "chi" else -1.0
    return np.asarray(log_q, dtype=np.float64) + sign * log_4pi_r2


def weight_spread(energy_kT: np.ndarray, log_q: np.ndarray, *, centroid_flow: np.ndarray | None = None,
                  com_correction: str = "chi", drop_top_fraction: float = PAPER_DROP_TOP_FRACTION, top_fraction: float = TOP_FRACTION
                  ) -> dict:
    """Spread of the SNIS log weights log w = -E/kT - log q (before dropping the largest).

    ``log_weight_var``: variance of the finite log w (0 for a perfect proposal); ``top1pct_weight_share``:
    share of the total weight held by the top 1% of samples (0.01 for a perfect proposal, 1 when one sample
    holds it all); ``n_finite``; ``ess`` by centre-of-mass correction (needs ``centroid_flow``, the flow-space
    centroid of every proposal), each with the run's top-weight drop.
    """
    log_w = -np.asarray(energy_kT, dtype=np.float64) - np.asarray(log_q, dtype=np.float64)
    finite = np.isfinite(log_w)
    lw = log_w[finite]
    out: dict = {"n_samples": int(len(log_w)), "n_finite": int(finite.sum()),
                 "log_weight_var": float(np.var(lw)) if lw.size > 1 else None,
                 "top1pct_weight_share": None, "ess_no_drop": float(kish_ess(log_w))}
    if lw.size:
        k = max(1, int(math.ceil(top_fraction * len(log_w))))
        w = np.exp(normalise_log_weights(lw))
        out["top1pct_weight_share"] = float(np.sort(w)[-k:].sum())
    if centroid_flow is not None:
        out["ess"] = {}
        for kind in COM_CORRECTIONS:
            lq = switch_com_correction(log_q, centroid_flow, com_correction, kind)
            out["ess"][kind] = float(snis(-np.asarray(energy_kT, float), lq, drop_top_fraction, n_resample=0).ess)
    return out


def diagnose(topology, temperature_K: float, md_positions_nm: np.ndarray, proposal_positions_nm: np.ndarray,
             proposal_energy_kT: np.ndarray, log_q: np.ndarray, snis_log_weights: np.ndarray | None, *,
             centroid_flow: np.ndarray | None = None, com_correction: str = "chi",
             drop_top_fraction: float = PAPER_DROP_TOP_FRACTION) -> dict:
    """All three views for one system: ``{energy_terms, bond_deviation, weights}``."""
    md_terms = term_energies_kT(topology, md_positions_nm, temperature_K)
    prop_terms = term_energies_kT(topology, proposal_positions_nm, temperature_K)
    return {
        "energy_terms": energy_terms(md_terms, prop_terms, snis_log_weights),
        "bond_deviation": bond_deviation(topology, md_positions_nm, proposal_positions_nm),
        "weights": weight_spread(proposal_energy_kT, log_q, centroid_flow=centroid_flow,
                                 com_correction=com_correction, drop_top_fraction=drop_top_fraction),
    }
