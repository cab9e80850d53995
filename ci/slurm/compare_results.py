"""Check a SLURM run's artefacts against a local run's (called by ci/slurm/test_slurm.sh).

    python ci/slurm/compare_results.py SLURM_RUN_DIR LOCAL_RUN_DIR CONFIG [PRESET ...]

What is compared (what is deterministic across hosts):
  * results/sequences/*.csv: byte-identical to the local run's.
  * results/structures/*.pdb: the same set of files with the same residues and atom names
    (coordinates are not deterministic: two local runs differ too).
  * MD (reference and batches, as many as the config asks for): the file exists, frame count and
    time stamps follow the protocol of the config (proseflow.stages.settings.md_protocol), the topology
    matches the sequence (and the structure file, for reference MD), the protocol stored in the file
    holds the config's settings (seed aside: it is derived per job), energies and coordinates are finite.
    Batches: manifest.json names the right slice of the split's sequence CSV.
  * If the local run also did MD (full mode), the stored protocols (seeds included) and time stamps
    must match, and the largest coordinate difference is reported (same seeds, but OpenMM's
    floating-point results may differ between processes; reported, not required to be zero).
  * Every results/**/*.json of both runs parses with a strict JSON parser (no NaN / Infinity).

Exit status 0 when everything matches; otherwise each mismatch is printed and the status is 1.
"""

from __future__ import annotations

import filecmp
import json
import sys
from pathlib import Path

import numpy as np


def main(argv: list[str]) -> int:
    if len(argv) < 3:
        print(__doc__)
        return 2
    slurm, local = Path(argv[0]), Path(argv[1])
    sys.path.insert(0, str(slurm / "src"))
    from proseflow.physics import trajectory_io
    from proseflow.stages.settings import load_config, md_protocol, n_batches, reference_files, sequence_set

    config = load_config(*[slurm / p for p in argv[2:]])
    errors: list[str] = []
    notes: list[str] = []

    def err(msg: str) -> None:
        errors.append(msg)
        print(f"  MISMATCH {msg}")

    # -- sequences ---------------------------------------------------------------------------------
    seq_dir = "results/sequences"
    for name in ("train", "val", "test"):
        a, b = slurm / seq_dir / f"{name}.csv", local / seq_dir / f"{name}.csv"
        if not a.is_file() or not b.is_file():
            err(f"{seq_dir}/{name}.csv missing (slurm: {a.is_file()}, local: {b.is_file()})")
        elif not filecmp.cmp(a, b, shallow=False):
            err(f"{seq_dir}/{name}.csv differs from the local run's")
    notes.append("sequences: 3 CSVs compared")

    # -- structures --------------------------------------------------------------------------------
    # Not byte-deterministic even between two local runs (hydrogen placement and the minimisation of
    # build_structure differ run to run), so: same files, same residues, same atoms per residue.
    def pdb_atoms(p: Path) -> list[tuple[str, str, str]]:
        return sorted((ln[22:26].strip(), ln[17:20].strip(), ln[12:16].strip())
                      for ln in p.read_text().splitlines() if ln.startswith(("ATOM", "HETATM")))

    s_pdbs = sorted(p.name for p in (slurm / "results/structures").glob("*.pdb"))
    l_pdbs = sorted(p.name for p in (local / "results/structures").glob("*.pdb"))
    if s_pdbs != l_pdbs:
        err(f"structure sets differ: slurm {s_pdbs} vs local {l_pdbs}")
    for name in sorted(set(s_pdbs) & set(l_pdbs)):
        if pdb_atoms(slurm / "results/structures" / name) != pdb_atoms(local / "results/structures" / name):
            err(f"results/structures/{name}: residues/atoms differ from the local run's")
    notes.append(f"structures: {len(s_pdbs)} PDBs compared (residues and atom names)")

    # -- MD ----------------------------------------------------------------------------------------
    def check_traj(path: Path, sequence: str, kind: str, pdb: Path | None) -> None:
        rel = path.relative_to(slurm)
        if not path.is_file():
            err(f"{rel} missing")
            return
        expected = md_protocol(config, kind)
        data = trajectory_io.read(path)
        n = len(data["time_ps"])
        if n != expected.n_frames:
            err(f"{rel}: {n} frames, protocol says {expected.n_frames}")
        dt = np.diff(data["time_ps"].astype(np.float64))
        if n > 1 and not np.allclose(dt, expected.save_interval_ps, rtol=1e-4, atol=1e-4):
            err(f"{rel}: frame spacing {dt.min():.4g}..{dt.max():.4g} ps, protocol says "
                f"{expected.save_interval_ps} ps")
        if n and not np.isclose(data["time_ps"][-1] - data["time_ps"][0],
                                (n - 1) * expected.save_interval_ps, rtol=1e-4, atol=1e-3):
            err(f"{rel}: time span {data['time_ps'][0]}..{data['time_ps'][-1]} ps inconsistent")
        # the file stores the config's protocol plus run facts (platform used, copies, versions...);
        # compare the config's keys, except the per-job seed and `platform: auto` (resolved at run time)
        diff = expected.differences(data["protocol"],
                                    ignore=("seed", "platform") if expected.platform == "auto" else ("seed",))
        if diff:
            err(f"{rel}: stored protocol differs from the config's: {diff}")
        if not (np.isfinite(data["positions_nm"]).all() and np.isfinite(data["energy_kJ_per_mol"]).all()):
            err(f"{rel}: non-finite coordinates or energies")
        top = trajectory_io.mdtraj_topology(path)
        from proseflow.physics.sequences import THREE_TO_ONE

        seq = "".join(THREE_TO_ONE.get(r.name, "?") for r in top.residues if r.name not in ("ACE", "NME"))
        if seq != sequence:
            err(f"{rel}: topology sequence {seq!r}, expected {sequence!r}")
        if data["positions_nm"].shape[1:] != (top.n_atoms, 3):
            err(f"{rel}: coordinates {data['positions_nm'].shape} vs topology {top.n_atoms} atoms")
        if pdb is not None and pdb.is_file():
            from proseflow.physics.structures import load_pdb

            ptop, _ = load_pdb(pdb)
            if ptop.getNumAtoms() != top.n_atoms:
                err(f"{rel}: {top.n_atoms} atoms, structure {pdb.name} has {ptop.getNumAtoms()}")
        # full mode: the local run did the same MD
        lpath = local / rel
        if lpath.is_file():
            ldata = trajectory_io.read(lpath)
            if ldata["protocol"] != data["protocol"]:
                err(f"{rel}: stored protocol (incl. seed) differs from the local run's")
            if not np.array_equal(ldata["time_ps"], data["time_ps"]):
                err(f"{rel}: time stamps differ from the local run's")
            elif ldata["positions_nm"].shape == data["positions_nm"].shape:
                d = float(np.abs(ldata["positions_nm"] - data["positions_nm"]).max()) if n else 0.0
                notes.append(f"{rel}: max |x_slurm - x_local| = {d:.3g} nm")

    n_traj = 0
    shipped = reference_files(config)  # md.reference_files: a file used as is, not this config's protocol
    for s in sequence_set(config, "test"):
        if s in shipped:
            copy, source = slurm / f"results/md/{s}.h5", slurm / shipped[s]
            if not copy.is_file():
                err(f"results/md/{s}.h5 missing")
            elif not np.array_equal(trajectory_io.read(copy)["positions_nm"], trajectory_io.read(source)["positions_nm"]):
                err(f"results/md/{s}.h5 is not the shipped {shipped[s]}")
            else:
                notes.append(f"results/md/{s}.h5: the shipped {shipped[s]}, frame for frame")
            n_traj += 1
            continue
        check_traj(slurm / f"results/md/{s}.h5", s, "reference", slurm / f"results/structures/{s}.pdb")
        n_traj += 1
    import pandas as pd

    for split in ("train", "val"):
        per_job = int(config["md"][split]["systems_per_job"])
        csv = slurm / seq_dir / f"{split}.csv"
        seqs = pd.read_csv(csv, dtype={"sequence": str}, keep_default_na=False)["sequence"].tolist() if csv.is_file() else []
        for b in range(n_batches(config, split)):
            d = slurm / f"results/md/{split}/batch{b:05d}"
            mine = seqs[b * per_job:(b + 1) * per_job]
            man = d / "manifest.json"
            if not man.is_file():
                err(f"{man.relative_to(slurm)} missing")
                continue
            listed = json.loads(man.read_text()).get("sequences")
            if listed != mine:
                err(f"{man.relative_to(slurm)}: sequences {listed}, expected {mine}")
            for s in mine:
                check_traj(d / f"{s}.h5", s, split, d / f"{s}.pdb")
                n_traj += 1
    notes.append(f"MD: {n_traj} trajectories checked against the protocol")

    # -- every JSON artefact the demo wrote is strict JSON (no NaN / Infinity) ------------------------------
    def refuse(constant: str):
        raise ValueError(f"non-standard JSON constant {constant}")

    n_json = 0
    for root in (slurm, local):
        for path in sorted((root / "results").rglob("*.json")):
            n_json += 1
            try:
                json.loads(path.read_text(), parse_constant=refuse)
            except ValueError as e:
                err(f"{path}: not strict JSON ({e})")
    notes.append(f"JSON: {n_json} files parsed with a strict parser")

    for n in notes:
        print(f"  {n}")
    if errors:
        print(f"compare_results: {len(errors)} mismatch(es)")
        return 1
    print("compare_results: all artefacts match")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
