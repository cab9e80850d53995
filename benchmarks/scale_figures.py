"""Scale figures of the paper configuration (config.yaml), printed as a table (and --json).

    .venv/bin/python benchmarks/scale_figures.py [--json out.json] [--configfile config.yaml]
                                                 [--md-glob 'results/md/train/batch*/*.h5']

1. Dry run: wall time and peak memory (max RSS) of `snakemake -n` on the paper DAG, in a subprocess,
   in a scratch copy of the checkout (so a developer's results/ does not shrink the DAG).
2. SLURM submissions: how many sbatch jobs `--profile workflow/profiles/slurm` would make for that
   DAG, counting a job group (groups + group-components of the profile) as one submission and
   leaving out local rules (e.g. `all`). Computed from snakemake's own DAG, in a subprocess that runs
   the normal CLI with the profile (dry run) and reads the DAG's groups after they are formed.
3. Zarr training store (proseflow.data.dataset.write_store, when that module exists; skipped otherwise):
   bytes on disk per training frame for the largest (8-residue) systems, from MD trajectories if
   --md-glob finds some, else from a synthetic thermal trajectory of a built peptide (the
   compression ratio then is indicative only). Extrapolated to the paper's training set.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable

MEASURE = r"""
import json, resource, subprocess, sys, time
t = time.perf_counter()
r = subprocess.run(sys.argv[2:], stdout=subprocess.DEVNULL, stderr=open(sys.argv[1], "w"))
wall = time.perf_counter() - t
print(json.dumps({"rc": r.returncode, "wall_s": wall,
                  "max_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}))
"""

# Runs snakemake's CLI unchanged, but records the DAG's jobs and groups each time they are formed.
COUNT = r"""
import json, os, sys
from collections import Counter
from snakemake.cli import main  # first: it imports snakemake's modules in a working order
import snakemake.dag as dagmod

out = os.environ["PF_COUNT_OUT"]
orig = dagmod.DAG.update_groups

def update_groups(self):
    orig(self)
    wf = self.workflow
    jobs = list(self.needrun_jobs())
    local = lambda j: j.rule.name in wf._localrules or j.rule.norun
    per_rule, groups, singles, n_local = Counter(), {}, 0, 0
    for j in jobs:
        per_rule[j.rule.name] += 1
        g = self._group.get(j)
        if g is not None:
            groups.setdefault(id(g), (g.groupid, []))[1].append(j.rule.name)
        elif local(j):
            n_local += 1
        else:
            singles += 1
    group_sizes = Counter()
    group_jobs = Counter()
    for gid, rules in groups.values():
        group_sizes[gid] += len(rules)
        group_jobs[gid] += 1
    json.dump({"per_rule": per_rule, "local_jobs": n_local, "ungrouped_submissions": singles,
               "group_submissions": dict(group_jobs), "jobs_in_groups": dict(group_sizes),
               "total_jobs": len(jobs)}, open(out, "w"))

dagmod.DAG.update_groups = update_groups
sys.exit(main(sys.argv[1:]))
"""


def scratch_copy(dest: Path) -> None:
    """Tracked and untracked-but-not-ignored files of the working tree (no results/, no .snakemake)."""
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                           cwd=ROOT, capture_output=True, check=True).stdout.decode().split("\0")
    for f in files:
        src = ROOT / f
        if f and src.is_file():
            (dest / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / f)


def snakemake_cmd() -> list[str]:
    exe = Path(PY).with_name("snakemake")
    return [str(exe)] if exe.exists() else [PY, "-m", "snakemake"]


def dry_run(work: Path, configfile: str) -> dict:
    err = work / "dryrun.stderr"
    cmd = [PY, "-c", MEASURE, str(err), *snakemake_cmd(), "-n", "--cores", "1",
           "--workflow-profile", "none", "--configfile", configfile]
    res = json.loads(subprocess.run(cmd, cwd=work, capture_output=True, text=True, check=True).stdout)
    if res["rc"] != 0:
        raise RuntimeError(f"snakemake -n failed:\n{err.read_text()[-3000:]}")
    return res


def slurm_submissions(work: Path, configfile: str) -> dict:
    out = work / "count.json"
    env = {**os.environ, "PF_COUNT_OUT": str(out)}
    # the executor is only validated here, nothing is submitted (dry run)
    cmd = [PY, "-c", COUNT, "-n", "--profile", "workflow/profiles/slurm", "--workflow-profile", "none",
           "--configfile", configfile, "--quiet", "all"]
    r = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True)
    if r.returncode != 0 or not out.exists():
        raise RuntimeError(f"counting failed (rc {r.returncode}):\n{r.stderr[-3000:]}")
    c = json.loads(out.read_text())
    c["submissions"] = c["ungrouped_submissions"] + sum(c["group_submissions"].values())
    c["submissions_without_groups"] = c["ungrouped_submissions"] + sum(c["jobs_in_groups"].values())
    return c


def zarr_bytes_per_frame(md_glob: str | None, n_frames_synthetic: int = 4096) -> dict:
    sys.path.insert(0, str(ROOT / "src"))
    try:
        from proseflow.data import dataset
    except ImportError as e:
        return {"skipped": f"proseflow.data.dataset not importable ({e})"}
    if not hasattr(dataset, "write_store"):
        return {"skipped": "proseflow.data.dataset has no write_store yet"}
    import numpy as np

    systems, source = [], ""
    if md_glob:
        files = sorted(ROOT.glob(md_glob))
        if files:
            import h5py

            # the largest systems (most atoms) are the ones that dominate the store
            def n_atoms(p):
                with h5py.File(p, "r") as f:
                    return f["coordinates"].shape[1]

            files = sorted(files, key=n_atoms, reverse=True)[:4]
            systems = [(p.stem, str(p)) for p in files]
            source = f"MD trajectories ({', '.join(p.name for p in files)})"
    if not systems:
        from proseflow.physics.structures import build_peptide

        rng = np.random.default_rng(0)
        seq = "ACDEFGHK"  # 8 residues: the paper's largest training systems
        _, x0 = build_peptide(seq)
        # thermal motion: AR(1) displacements of ~0.05 nm per atom, correlated over ~20 frames
        n, a = n_frames_synthetic, 0.95
        d = np.zeros((n, *x0.shape), np.float32)
        noise = rng.normal(0, 0.05 * np.sqrt(1 - a * a), size=d.shape).astype(np.float32)
        for t in range(1, n):
            d[t] = a * d[t - 1] + noise[t]
        systems = [(seq, (x0[None] + d).astype(np.float32))]
        source = f"synthetic AR(1) trajectory of {seq}, {n} frames (indicative only)"
    tmp = Path(tempfile.mkdtemp(prefix="pf-zarr-"))
    try:
        t = time.perf_counter()
        store = dataset.write_store(tmp / "bench.zarr", systems, 1, input_interval_ps=1.0)
        wall = time.perf_counter() - t
        total = sum(p.stat().st_size for p in store.rglob("*") if p.is_file())
        positions = sum(p.stat().st_size for p in store.rglob("*") if p.is_file() and "positions" in p.parts)
        index = dataset.store_index(store) if hasattr(dataset, "store_index") else None
        n_frames = sum(r["n_frames"] for r in index) if index else None
        atoms = [r["n_atoms"] for r in index] if index else []
        if not n_frames:
            return {"skipped": "could not read the store index"}
        raw = sum(r["n_frames"] * r["n_atoms"] * 12 for r in index)
        return {"source": source, "frames": n_frames, "atoms_per_system": atoms,
                "bytes_per_frame": total / n_frames, "position_bytes_per_frame": positions / n_frames,
                "raw_float32_bytes_per_frame": raw / n_frames, "compression_ratio": raw / max(positions, 1),
                "write_s": wall}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configfile", default="config.yaml")
    ap.add_argument("--md-glob", default="results/md/train/batch*/*.h5",
                    help="MD trajectories (relative to the repository) for the Zarr figure")
    ap.add_argument("--json", help="also write the figures to this JSON file")
    ap.add_argument("--quick", action="store_true", help="shorter synthetic trajectory (make bench)")
    args = ap.parse_args(argv)

    figures: dict = {}
    with tempfile.TemporaryDirectory(prefix="pf-scale-") as d:
        work = Path(d)
        scratch_copy(work)
        figures["dry_run"] = dry_run(work, args.configfile)
        figures["slurm"] = slurm_submissions(work, args.configfile)
    figures["zarr"] = zarr_bytes_per_frame(args.md_glob, 512 if args.quick else 4096)

    sys.path.insert(0, str(ROOT / "src"))
    from proseflow.stages.settings import load_config, md_protocol

    cfg = load_config(ROOT / "config.yaml", *([ROOT / args.configfile] if args.configfile != "config.yaml" else []))
    n_train = sum(cfg["sequences"]["train_counts"].values())
    md = md_protocol(cfg, "train")
    interval = (cfg.get("dataset") or {}).get("frame_interval_ps", md.save_interval_ps)
    frames = int(round(md.length_ps / interval))
    figures["paper"] = {"training_systems": n_train, "md_frames_per_system": frames}

    dr, sl, z = figures["dry_run"], figures["slurm"], figures["zarr"]
    print(f"scale figures for {args.configfile}")
    print(f"  dry run (snakemake -n):        {dr['wall_s']:.1f} s wall, peak RSS {dr['max_rss_mb']:.0f} MB, "
          f"{sl['total_jobs']} jobs")
    print(f"  jobs per rule:                 {dict(sl['per_rule'])}")
    print(f"  SLURM submissions (profile):   {sl['submissions']} "
          f"(ungrouped {sl['ungrouped_submissions']}, group jobs {sl['group_submissions']} holding "
          f"{sl['jobs_in_groups']} rule jobs; local {sl['local_jobs']}); "
          f"{sl['submissions_without_groups']} without grouping")
    if "skipped" in z:
        print(f"  Zarr bytes per training frame: skipped: {z['skipped']}")
    else:
        total_tb = z["bytes_per_frame"] * n_train * frames / 1e12
        print(f"  Zarr bytes per training frame: {z['bytes_per_frame']:.0f} B on disk "
              f"({z['position_bytes_per_frame']:.0f} B positions, raw float32 {z['raw_float32_bytes_per_frame']:.0f} B, "
              f"ratio {z['compression_ratio']:.2f}; atoms {z['atoms_per_system']}; from {z['source']})")
        print(f"    paper training set (dataset.frame_interval_ps = {interval} ps): {n_train} systems x "
              f"{frames} frames ~ {total_tb:.2f} TB at this mean size per frame")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
