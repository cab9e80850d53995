"""The bill before the run: ``python -m proseflow plan`` prices the DAG a config defines, never starting a job.

Per stage: the number of jobs, the work (MD copy-steps, frames stored, training steps x batch x atoms,
proposals, SMC energy and flow evaluations), the bytes written and the time on the hardware a throughputs
file describes; then the totals, with the stage that dominates named. The throughputs are measured
(``plan --measure`` probes this machine; ``benchmarks/throughputs/*.json`` hold others, e.g. the paper's H100
rate), and every figure says whether it is measured at that size or extrapolated. The cost model:

- **MD** costs, per OpenMM context (one per job: a batch of systems, or one system's replicas as copies),
  ``steps x (md_step_overhead_s + pairs / md_pair_steps_per_s)`` where ``pairs`` is the atom pairs within the
  context's copies (sum of n (n - 1) / 2 over its copies: a peptide of up to 8 residues lies within the 2 nm
  cutoff, and copies are placed apart). Fitted to the MD runs of a real ``make demo`` (nine contexts, 1 to 10
  copies, 37 to 230 atoms: every one within 10%); a throughputs file without these two keys falls back to
  ``atoms x copy-steps / md_atom_steps_per_s`` (which prices a single-copy MD up to 4x too low).
- **Training** costs ``s_per_step x (batch x padded atoms) / (probe batch x probe atoms)`` for the variant's
  preset (linear in tokens: below ~200 atoms the per-token layers dominate attention on CPU), times the
  variant's parameters over its preset's where it overrides the size (``overrides: {channels: 64}``: the
  per-token layers scale with the parameters); batches pad to the longest system drawn, so padded atoms are the
  longest length's expected size. A compiled run adds its compile time as its own line.
- **Sampling**: ``proposals x atoms / flow_atom_samples_per_s[preset]`` for the flow (times the same size factor;
  a model used as is from ``file`` is sized by the ``flow_config`` stored in it), ``evaluations x atoms /
  energy_atom_evals_per_s`` for energies (SNIS: one per proposal; SMC: particles x evaluations per particle,
  each with a flow evaluation costed as a sample; self-improvement: rounds x samples, plus its final set).
- **Evaluation and reports**: ``eval_s_per_job`` per job (measured on the demo).
- **Bytes**: MD frames x atoms x 12 bytes (float32 xyz) + 8 per frame; Zarr stores x ``store_bytes_per_atom_frame``
  (measured compression); sample sets x atoms x 12 x proposals; model files x parameters x 4 (x3 for the
  training checkpoint's optimiser state).

Sequence sets drawn at random (``train_counts``) are priced by their expected size (mean atoms per residue of
the 20 standard residues); named sets (val, test, targets) exactly.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from proseflow.stages import settings as S

# atoms of each residue inside a zwitterionic peptide (amber14, HIE); a peptide has 3 more (NH3+ and OXT)
RESIDUE_ATOMS = {"A": 10, "C": 11, "D": 12, "E": 15, "F": 20, "G": 7, "H": 17, "I": 19, "K": 22, "L": 19, "M": 17,
                 "N": 14, "P": 14, "Q": 17, "R": 24, "S": 11, "T": 14, "V": 16, "W": 24, "Y": 21}
TERMINI_ATOMS = 3
MEAN_RESIDUE_ATOMS = sum(RESIDUE_ATOMS.values()) / len(RESIDUE_ATOMS)
SD_RESIDUE_ATOMS = math.sqrt(sum((a - MEAN_RESIDUE_ATOMS) ** 2 for a in RESIDUE_ATOMS.values()) / len(RESIDUE_ATOMS))
FLOAT32_XYZ = 12  # bytes per atom and frame, uncompressed
PER_FRAME = 8  # time and energy, float32 each


class ThroughputsError(ValueError):
    """A throughputs file that cannot price a plan: the file and the key are named."""


def atoms_of(seq: str) -> int:
    return sum(RESIDUE_ATOMS[a] for a in seq) + TERMINI_ATOMS


def expected_atoms(length: int) -> float:
    return MEAN_RESIDUE_ATOMS * length + TERMINI_ATOMS


def pairs_of(n_atoms: float, sd: float = 0.0) -> float:
    """Atom pairs n (n - 1) / 2 of a system (its expectation when n has standard deviation ``sd``)."""
    return (n_atoms**2 + sd**2 - n_atoms) / 2


def expected_longest(length: int) -> float:
    """The longest system a large batch of ``length``-residue peptides holds (about 2.5 SD above the mean)."""
    return expected_atoms(length) + 2.5 * SD_RESIDUE_ATOMS * math.sqrt(length)


@dataclass
class Throughputs:
    """Rates of one machine; ``measured``: which keys were measured there (the rest came from elsewhere)."""

    hardware: str
    md_atom_steps_per_s: float
    train: dict  # preset -> {"batch", "atoms", "s_per_step", optional "compile_s"}
    flow_atom_samples_per_s: dict  # preset -> atoms x samples per second (with exact log q)
    energy_atom_evals_per_s: float  # energies and forces
    store_bytes_per_atom_frame: float
    eval_s_per_job: float
    measured: list = field(default_factory=list)  # keys measured on this hardware (plan --measure)
    quoted: list = field(default_factory=list)  # keys quoted from a publication (the paper's 260 it/h)
    notes: str = ""
    md_step_overhead_s: float | None = None  # MD: fixed cost of one step of one context (s)
    md_pair_steps_per_s: float | None = None  # MD: atom pairs x steps per second within a context

    @classmethod
    def load(cls, path: str | Path) -> Throughputs:
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise ThroughputsError(f"{path}: cannot read a throughputs file: {e}") from None
        if not isinstance(data, dict):
            raise ThroughputsError(f"{path}: expected a JSON object of rates")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        missing = sorted(f.name for f in dataclasses.fields(cls)
                         if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
                         and f.name not in data)
        if unknown or missing:
            raise ThroughputsError(f"{path}: " + "; ".join(
                ([f"unknown key(s) {unknown}"] if unknown else []) + ([f"missing key(s) {missing}"] if missing else [])))
        t = cls(**data)
        t.check(str(path))
        return t

    def check(self, where: str = "throughputs") -> None:
        def positive(name, value):
            if not isinstance(value, int | float) or isinstance(value, bool) or not value > 0 or not math.isfinite(value):
                raise ThroughputsError(f"{where}: {name} must be a positive number, got {value!r}")

        for name in ("md_atom_steps_per_s", "energy_atom_evals_per_s", "store_bytes_per_atom_frame", "eval_s_per_job"):
            positive(name, getattr(self, name))
        for name in ("md_step_overhead_s", "md_pair_steps_per_s"):
            if getattr(self, name) is not None:
                positive(name, getattr(self, name))
        if (self.md_step_overhead_s is None) != (self.md_pair_steps_per_s is None):
            raise ThroughputsError(f"{where}: md_step_overhead_s and md_pair_steps_per_s come together (one is missing)")
        for preset, rate in self.flow_atom_samples_per_s.items():
            positive(f"flow_atom_samples_per_s.{preset}", rate)
        for preset, probe in self.train.items():
            for k in ("batch", "atoms", "s_per_step"):
                if k not in probe:
                    raise ThroughputsError(f"{where}: train.{preset} has no {k!r}")
                positive(f"train.{preset}.{k}", probe[k])
            if "compile_s" in probe:
                positive(f"train.{preset}.compile_s", probe["compile_s"])

    def basis(self, key: str) -> str:
        return "measured" if key in self.measured else "quoted" if key in self.quoted else "extrapolated"


@dataclass
class Row:
    stage: str
    jobs: int
    work: str
    seconds: float
    bytes: float
    basis: str


def _md_seconds(t: Throughputs, steps: float, contexts: int, pairs: float, atoms: float) -> tuple[float, str]:
    """Seconds of ``contexts`` OpenMM contexts of ``steps`` steps holding ``pairs`` atom pairs (``atoms`` copy-atoms)
    in all, and the basis of the figure."""
    if t.md_step_overhead_s is None:
        return atoms * steps / t.md_atom_steps_per_s, t.basis("md_atom_steps_per_s")
    return steps * (contexts * t.md_step_overhead_s + pairs / t.md_pair_steps_per_s), t.basis("md_pair_steps_per_s")


def _md_rows(config: Mapping, plan, t: Throughputs) -> list[Row]:
    rows = []
    for split in ("train", "val"):
        if not plan.trains:
            continue
        p = S.md_protocol(config, split)
        per_copy = (p.burn_in_ps + p.length_ps) * 1000.0 / p.timestep_fs
        steps = per_copy * p.replicas
        frames = p.n_frames * p.replicas
        if split == "train" and S.explicit_train(config) is None:
            counts = S.train_counts(config)
            n = sum(counts.values())
            atoms = sum(c * expected_atoms(length) for length, c in counts.items())
            pairs = sum(c * pairs_of(expected_atoms(length), SD_RESIDUE_ATOMS * math.sqrt(length))
                        for length, c in counts.items())
        else:
            seqs = S.explicit_train(config) if split == "train" else plan.val
            n, atoms = len(seqs), sum(atoms_of(s) for s in seqs)
            pairs = sum(pairs_of(atoms_of(s)) for s in seqs)
        jobs = S.n_batches(config, split)
        # a job is one context: its systems' replicas as copies, all advancing together
        seconds, basis = _md_seconds(t, per_copy, jobs, pairs * p.replicas, atoms * p.replicas)
        rows.append(Row(f"md_{split}", jobs, f"{n} systems x {steps:,.0f} copy-steps", seconds,
                        frames * (atoms * FLOAT32_XYZ + n * PER_FRAME), basis))
        if split == "train":
            every = max(1, round(config["dataset"]["frame_interval_ps"] / p.save_interval_ps))
            rows.append(Row("dataset", jobs, f"{n} systems x {frames // every:,} frames",
                            0.0, frames / every * atoms * t.store_bytes_per_atom_frame, t.basis("store_bytes_per_atom_frame")))
    p = S.md_protocol(config, "reference")
    per_copy = (p.burn_in_ps + p.length_ps) * 1000.0 / p.timestep_fs
    steps = per_copy * p.replicas
    frames = p.n_frames * p.replicas
    refs = [s for s in plan.eval_systems if s not in plan.reference_files]  # the others' MD is a file
    refs += sorted({f"{s}@{T:g}K" for s, T, _p in plan.temperature_cases  # one MD per system and other temperature
                    if S.md_suffix(T, config["md"]["temperature_K"])})
    atoms = sum(atoms_of(s.split("@")[0]) for s in refs)
    pairs = sum(pairs_of(atoms_of(s.split("@")[0])) for s in refs)
    seconds, basis = _md_seconds(t, per_copy, len(refs), pairs * p.replicas, atoms * p.replicas)  # replicas as copies
    rows.append(Row("md_reference", len(refs), f"{len(refs)} systems x {steps:,.0f} copy-steps", seconds,
                    frames * (atoms * FLOAT32_XYZ + len(refs) * PER_FRAME), basis))
    return rows


def _train_probe(t: Throughputs, preset: str) -> tuple[dict, str]:
    if preset in t.train:
        return t.train[preset], t.basis("train")
    raise ThroughputsError(f"no training rate for preset {preset!r} in the throughputs file (has: {sorted(t.train)}): "
                           "measure it with `proseflow plan --measure --presets " + preset + "`")


def _flow_rate(t: Throughputs, preset: str) -> float:
    if preset not in t.flow_atom_samples_per_s:
        raise ThroughputsError(f"no sampling rate for preset {preset!r} in the throughputs file "
                               f"(has: {sorted(t.flow_atom_samples_per_s)})")
    return t.flow_atom_samples_per_s[preset]


def _train_rows(config: Mapping, plan, t: Throughputs) -> list[Row]:
    rows = []
    named = S.explicit_train(config)  # a named training set is priced by its own systems' atoms
    lengths = [int(k) for k, c in S.train_counts(config).items() if c] if named is None else [len(s) for s in named]
    longest = expected_longest(max(lengths)) if lengths else 0.0
    sizes = [atoms_of(seq) for seq in named] if named else []
    for model in plan.train_models:
        if model in plan.imported:
            continue
        cfg = S.build("train", config, model=model).config
        probe, basis = _train_probe(t, cfg.model_preset)
        if sizes:
            padded = max(sizes) if cfg.length_buckets is None else sum(sizes) / len(sizes)
        else:
            padded = longest if cfg.length_buckets is None else sum(expected_atoms(n) for n in lengths) / len(lengths)
        tokens = cfg.batch_size * padded
        size = _size_factor(cfg.model_preset, cfg.model)
        seconds = cfg.max_steps * probe["s_per_step"] * size * tokens / (probe["batch"] * probe["atoms"])
        params = _parameters(cfg.model_preset, cfg.model)
        rows.append(Row(f"train ({model})", 1, f"{cfg.max_steps:,} steps x batch {cfg.batch_size} x {padded:.0f} atoms",
                        seconds, params * 4 * 4, basis if probe["atoms"] == round(padded) and probe["batch"] ==
                        cfg.batch_size and size == 1.0 else f"{basis}, scaled"))
        if cfg.compile is True or (cfg.compile == "auto" and cfg.max_steps >= cfg.COMPILE_MIN_STEPS):
            rows.append(Row(f"train ({model}) compile", 0, "torch.compile of the step", probe.get("compile_s", 150.0),
                            0.0, basis if "compile_s" in probe else "extrapolated"))
    return rows


def _parameters(preset: str, overrides: Mapping, flow_config: Mapping | None = None) -> int:
    """Parameters of a preset (or of a model file's ``flow_config``, given): channels^2 x blocks x layers x ~12
    (attention + SwiGLU MLP + conditioning)."""
    from proseflow.flow.config import FlowConfig

    c = FlowConfig(**flow_config) if flow_config is not None else FlowConfig.preset(preset, **dict(overrides))
    return int(12 * c.channels**2 * c.n_blocks * c.n_layers + 2 * c.channels * c.n_blocks * 64)


def _size_factor(preset: str, overrides: Mapping, flow_config: Mapping | None = None) -> float:
    """A variant's cost relative to its preset's probe: parameters with the overrides (or of its model file)
    over those of the preset."""
    return _parameters(preset, overrides, flow_config) / _parameters(preset, {})


def file_flow_config(spec: Mapping) -> dict | None:
    """The ``flow_config`` stored in a model used as is (``models.<name>.file``), when the file is there: a shipped
    model is sized by what it is, not by its config entry's preset (the shipped 64-channel models sit under
    ``preset: small``, 128 channels). None for a trained or released model, or a file not (yet) present."""
    path = spec.get("file")
    if not path or not Path(path).is_file():
        return None
    import torch

    try:
        return dict(torch.load(path, map_location="cpu", weights_only=True, mmap=True)["flow_config"])
    except (OSError, RuntimeError, KeyError, TypeError, ValueError, EOFError):  # not a model file: its config entry
        return None


def _sampling_rows(config: Mapping, plan, t: Throughputs) -> list[Row]:
    rows = []
    jobs: dict[str, list] = {}  # stage -> [(jobs, atoms x evaluations, flow atoms x samples, bytes, work)]
    cases = [(plan.eval_model_of(s), s, plan.samplers) for s in plan.eval_systems]
    cases += [(m, s, ["snis"]) for m, s in plan.variant_evals()]
    conditions = [c for c in plan.temperature_cases if plan.temperature_condition(*c)]  # others: the main evaluation
    cases += [(plan.eval_model_of(s), s, ["snis"]) for s, _T, _p in conditions]
    flow_configs = {m: file_flow_config(config["models"][m]) for m in {c[0] for c in cases}}
    for model, seq, samplers in cases:
        atoms = atoms_of(seq)
        spec = config["models"][model]
        flow = _flow_rate(t, spec["preset"]) / _size_factor(spec["preset"], spec.get("overrides") or {},
                                                             flow_configs[model])
        sp = S.build("sample", config, model=model)
        n = sp.n_proposals
        jobs.setdefault("sample", []).append((0.0, n * atoms / flow, n * atoms * FLOAT32_XYZ, n))
        jobs.setdefault("snis", []).append((n * atoms / t.energy_atom_evals_per_s, 0.0, n * atoms * FLOAT32_XYZ, n))
        for name in samplers:
            if name.startswith("smc_"):
                s = S.build("smc", config, kernel=name[4:], model=model)
                per = (1 + s.smc.max_levels * s.smc.n_mcmc_steps) if s.smc.adaptive else s.smc.n_levels * s.smc.n_mcmc_steps
                evals = s.n_particles * per
                jobs.setdefault(name, []).append((evals * atoms / t.energy_atom_evals_per_s,
                                                  (s.n_particles + evals) * atoms / flow,
                                                  s.n_particles * atoms * FLOAT32_XYZ, evals))
            elif name == "self_improve":
                si = S.build("self_improve", config, model=model).improve
                draws = si.n_rounds * si.n_samples + si.n_final
                jobs.setdefault(name, []).append((draws * atoms / t.energy_atom_evals_per_s,
                                                  (draws + 3 * si.n_rounds * si.steps * si.batch_size) * atoms / flow,
                                                  si.n_final * atoms * FLOAT32_XYZ, draws))
    for stage, items in jobs.items():
        energy_s = sum(i[0] for i in items)
        flow_s = sum(i[1] for i in items)
        evals = sum(i[3] for i in items)
        unit = "proposals" if stage == "sample" else "energy evaluations"
        rows.append(Row(stage, len(items), f"{evals:,.0f} {unit}", energy_s + flow_s, sum(i[2] for i in items),
                        t.basis("energy_atom_evals_per_s" if stage != "sample" else "flow_atom_samples_per_s")))
    n_eval = len(plan.eval_systems) + len(plan.variant_evals()) + len(conditions)
    n_eval += len(plan.eval_systems)  # TICA, one per system
    n_eval += len(plan.eval_systems) + 2 + (1 if plan.temperature_cases else 0)  # budget curves, pages
    rows.append(Row("evaluate, tica, budget, reports", n_eval, f"{n_eval} jobs", n_eval * t.eval_s_per_job, 0.0,
                    t.basis("eval_s_per_job")))
    return rows


def make_plan(config: Mapping, t: Throughputs) -> dict:
    """The bill of ``config`` on the hardware of ``t``: one row per stage, the totals, the dominant stage."""
    plan = S.plan(config)  # the jobs the workflow would run
    rows = _md_rows(config, plan, t) + _train_rows(config, plan, t) + _sampling_rows(config, plan, t)
    total_s = sum(r.seconds for r in rows)
    top = max(rows, key=lambda r: r.seconds)
    return {"hardware": t.hardware, "rows": [dataclasses.asdict(r) for r in rows], "total_s": total_s,
            "total_bytes": sum(r.bytes for r in rows), "dominant": top.stage,
            "dominant_share": top.seconds / total_s if total_s else 0.0}


def _human_s(s: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if s >= size:
            return f"{s / size:,.1f} {unit}"
    return f"{s:.0f} s"


def _human_b(b: float) -> str:
    for unit, size in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if b >= size:
            return f"{b / size:,.1f} {unit}"
    return f"{b:.0f} B"


def format_plan(p: dict) -> str:
    lines = [f"plan on {p['hardware']} (nothing was run; 'extrapolated': a rate not measured at that size)", "",
             f"{'stage':<34} {'jobs':>6} {'time':>11} {'bytes':>10}  {'basis':<12} work"]
    for r in p["rows"]:
        lines.append(f"{r['stage']:<34} {r['jobs']:>6} {_human_s(r['seconds']):>11} {_human_b(r['bytes']):>10}  "
                     f"{r['basis']:<12} {r['work']}")
    lines += ["", f"total: {_human_s(p['total_s'])} ({p['total_s'] / 3600:,.1f} h), {_human_b(p['total_bytes'])}; "
                  f"dominated by {p['dominant']} ({100 * p['dominant_share']:.0f}% of the time)",
              "(read times as +/- 30%: on shared hardware one machine's MD rate varied by 25% within a day; "
              "--measure probes the machine you are on)"]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------- measuring
def measure(presets: tuple[str, ...] = ("tiny", "small"), threads: int | None = None, quick: bool = False) -> Throughputs:
    """Short probes on this machine (a minute or two): batched MD of a dipeptide and a tetrapeptide, training
    steps and sampling of each preset at one shape, energies and forces, and a Zarr store's bytes per atom-frame.
    ``eval_s_per_job`` is not probed (it is the demo's measured mean; see benchmarks/README.md)."""
    import os
    import platform
    import tempfile
    import time

    import numpy as np
    import openmm
    import torch
    from openmm import unit

    from proseflow.data.dataset import write_store
    from proseflow.flow.config import FlowConfig
    from proseflow.flow.model import ProseFlow
    from proseflow.physics.energy import make_energy
    from proseflow.physics.md import combine_copies
    from proseflow.physics.structures import build_peptide
    from proseflow.physics.system import create_system
    from proseflow.samplers.proposals import system_batch

    threads = threads or len(os.sched_getaffinity(0))
    torch.set_num_threads(threads)
    rates, notes, step_fit = [], [], []  # step_fit: (pairs in the context, seconds per step)
    for seq, copies in (("AA", 8), ("GYDP", 4), ("AA", 1), ("DGVAHALS", 1)):  # MD: batched copies and single ones
        top, pos = build_peptide(seq)
        ctop, cpos, _ = combine_copies([top] * copies, [pos] * copies, cutoff_nm=2.0)
        integrator = openmm.LangevinMiddleIntegrator(310 * unit.kelvin, 0.3 / unit.picosecond, 1 * unit.femtosecond)
        ctx = openmm.Context(create_system(ctop), integrator, openmm.Platform.getPlatformByName("CPU"),
                             {"Threads": str(threads)})
        ctx.setPositions(cpos)
        openmm.LocalEnergyMinimizer.minimize(ctx, maxIterations=100)
        integrator.step(100)
        n = 300 if quick else 2000
        t0 = time.perf_counter()
        integrator.step(n)
        dt = (time.perf_counter() - t0) / n
        step_fit.append((copies * pairs_of(top.getNumAtoms()), dt))
        if copies > 1:
            rates.append(ctop.getNumAtoms() / dt)
        notes.append(f"MD {seq} x {copies} copies: {copies / dt:,.0f} copy-steps/s")
    md_rate = float(np.mean(rates))
    # seconds per step = overhead + pairs / rate, least squares over the probes
    (overhead, per_pair), *_ = np.linalg.lstsq(np.array([[1.0, q] for q, _ in step_fit]),
                                               np.array([dt for _, dt in step_fit]), rcond=None)
    if not (overhead > 0 and per_pair > 0):  # noisy probes: keep the atom model rather than a meaningless fit
        overhead = per_pair = None

    top, _ = build_peptide("GYDPETGTWG")  # 10 residues, 138 atoms: about the paper's longest systems
    n_atoms = top.getNumAtoms()
    train, flow = {}, {}
    for preset in presets:
        model = ProseFlow(FlowConfig.preset(preset))
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        batch_size = 16
        batch = system_batch(top, batch_size)
        x = torch.randn(batch_size, batch["mask"].shape[1], 3) * batch["mask"][..., None]
        times = []
        for i in range(2 + (2 if quick else 5)):
            t0 = time.perf_counter()
            loss = -model.log_prob(x, batch).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            if i >= 2:
                times.append(time.perf_counter() - t0)
        train[preset] = {"batch": batch_size, "atoms": n_atoms, "s_per_step": float(np.median(times))}
        model.eval()
        n_samples = 64
        with torch.no_grad():
            model.sample(system_batch(top, 4))
            t0 = time.perf_counter()
            model.sample(system_batch(top, n_samples))
        flow[preset] = n_samples * n_atoms / (time.perf_counter() - t0)

    energy = make_energy(top, 310.0, backend="torch")
    _, pos = build_peptide("GYDPETGTWG")
    frames = np.repeat(pos[None], 256, axis=0) + np.random.default_rng(0).normal(0, 0.005, (256, *pos.shape))
    energy.energy_and_forces_kT(frames[:8])
    t0 = time.perf_counter()
    energy.energy_and_forces_kT(frames)
    energy_rate = 256 * n_atoms / (time.perf_counter() - t0)

    with tempfile.TemporaryDirectory() as tmp:  # the store's compression on an MD-like random walk
        top4, pos4 = build_peptide("GYDP")
        walk = np.cumsum(np.random.default_rng(1).normal(0, 0.002, (2000, *pos4.shape)), axis=0) * 0.1 + pos4
        store = write_store(Path(tmp) / "probe.zarr", [("GYDP", walk.astype(np.float32))], 1,
                            topologies={"GYDP": top4})
        size = sum(f.stat().st_size for f in store.rglob("*") if f.is_file())
        store_bytes = size / (2000 * top4.getNumAtoms())
    measured = ["md_atom_steps_per_s", "train", "flow_atom_samples_per_s", "energy_atom_evals_per_s",
                "store_bytes_per_atom_frame"] + (["md_step_overhead_s", "md_pair_steps_per_s"] if overhead else [])
    return Throughputs(hardware=f"{platform.node()} ({platform.processor() or platform.machine()}, {threads} threads, "
                                f"{'CUDA' if torch.cuda.is_available() else 'CPU'})",
                       md_atom_steps_per_s=md_rate, train=train, flow_atom_samples_per_s=flow,
                       energy_atom_evals_per_s=energy_rate, store_bytes_per_atom_frame=store_bytes,
                       eval_s_per_job=20.0, measured=measured,
                       md_step_overhead_s=float(overhead) if overhead else None,
                       md_pair_steps_per_s=float(1.0 / per_pair) if per_pair else None,
                       notes="; ".join(notes) + "; eval_s_per_job: the demo's mean evaluation job (not probed)")


def main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="proseflow plan", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configfile", nargs="+", default=[], help="presets over config.yaml, as Snakemake takes them")
    ap.add_argument("--base", default="config.yaml", help="the base config (default: config.yaml)")
    ap.add_argument("--throughputs", default="benchmarks/throughputs/cpu_2core.json",
                    help="rates of the hardware to price on (JSON; --measure writes one)")
    ap.add_argument("--measure", metavar="OUT", help="probe this machine and write its throughputs file to OUT")
    ap.add_argument("--presets", nargs="+", default=["tiny", "small"], help="model presets to probe with --measure")
    ap.add_argument("--quick", action="store_true", help="shorter probes")
    ap.add_argument("--json", metavar="OUT", help="also write the plan as JSON")
    ap.add_argument("--compare", metavar="LOG", help="a Snakemake log of a real run of this config: predicted vs measured")
    args = ap.parse_args(argv)
    if args.measure:
        t = measure(tuple(args.presets), quick=args.quick)
        Path(args.measure).parent.mkdir(parents=True, exist_ok=True)
        Path(args.measure).write_text(json.dumps(dataclasses.asdict(t), indent=1) + "\n")
        print(f"throughputs of {t.hardware} -> {args.measure}")
        return 0
    if args.compare and not Path(args.compare).is_file():
        print(f"proseflow plan: --compare {args.compare!r} is not a file: give the Snakemake log of a run of this "
              "config (Snakemake writes one per run under .snakemake/log/)")
        return 2
    try:
        config = S.load_config(args.base, *args.configfile)
        S.check_config(config)
        t = Throughputs.load(args.throughputs)
        p = make_plan(config, t)
    except (S.ConfigError, ThroughputsError) as e:
        print(f"proseflow plan: {e}")
        return 2
    print(format_plan(p))
    if args.compare:
        print("\n" + compare(p, job_times(Path(args.compare).read_text())))
    if args.json:
        Path(args.json).write_text(json.dumps({"configs": [args.base, *args.configfile], "throughputs": args.throughputs,
                                               **p}, indent=1) + "\n")
    return 0


# ------------------------------------------------------------------------- checking against a real run
RULE_STAGES = {"simulate_reference": "md_reference", "build_dataset": "dataset", "sample_proposals": "sample",
               "reweight_snis": "snis", "self_improve": "self_improve"}
EVAL_RULES = {"evaluate_system", "evaluate_variant", "fit_tica", "budget_curve", "budget_report", "summarise",
              "temperature_report", "export_samples", "import_model", "adopt_reference"}


def job_times(log_text: str) -> dict[str, float]:
    """Wall seconds per plan stage from a Snakemake log (each job from its start stamp to its "Finished jobid"):
    the measured side of :func:`compare`. Jobs that ran side by side on the cores each count their own wall time."""
    import re
    from datetime import datetime

    def stamp(line):
        return datetime.strptime(line.strip("[]\n "), "%a %b %d %H:%M:%S %Y")

    started, stages, out = {}, {}, {}
    last = None
    lines = log_text.splitlines()
    for i, line in enumerate(lines):
        if re.fullmatch(r"\[\w{3} \w{3} +\d+ \d\d:\d\d:\d\d \d{4}\]", line.strip()):
            last = stamp(line)
            continue
        m = re.match(r"(?:local)?rule (\w+):", line)
        if m and last is not None:
            rule, jobid, wildcards = m.group(1), None, {}
            for follow in lines[i + 1:i + 14]:
                if not follow.startswith((" ", "\t")):
                    break  # the job's block ends
                j = re.match(r"\s+jobid: (\d+)", follow)
                if j:
                    jobid = j.group(1)
                w = re.match(r"\s+wildcards: (.*)", follow)
                if w:
                    wildcards = dict(kv.split("=", 1) for kv in w.group(1).split(", ") if "=" in kv)
            if jobid is None:
                continue
            if rule == "simulate_batch":
                stage = f"md_{wildcards.get('split', 'train')}"
            elif rule == "train_model":
                stage = f"train ({wildcards.get('model')})"
            elif rule == "sample_smc":
                stage = f"smc_{wildcards.get('kernel')}"
            elif rule in EVAL_RULES:
                stage = "evaluate, tica, budget, reports"
            else:
                stage = RULE_STAGES.get(rule)
            if stage is not None:
                started[jobid], stages[jobid] = last, stage
            continue
        f = re.match(r"Finished jobid: (\d+)", line)
        if f and f.group(1) in started and last is not None:
            jobid = f.group(1)
            out[stages[jobid]] = out.get(stages[jobid], 0.0) + (last - started.pop(jobid)).total_seconds()
    return out


def compare(p: dict, measured: dict[str, float]) -> str:
    """Predicted against measured wall time per stage (and the ratio)."""
    lines = [f"{'stage':<34} {'predicted':>10} {'measured':>10} {'ratio':>7}"]
    for r in p["rows"]:
        got = measured.get(r["stage"])
        ratio = f"{r['seconds'] / got:.2f}" if got else "-"
        lines.append(f"{r['stage']:<34} {r['seconds']:>9.0f}s {'-' if got is None else f'{got:.0f}s':>10} {ratio:>7}")
    return "\n".join(lines)
