"""Implicit-solvent MD with the paper protocol, batched as non-interacting copies in one OpenMM context.

Small peptides are overhead-bound in OpenMM, so one job simulates several systems (different sequences)
as copies in one ``Context``: each copy sits on its own lattice site, further apart than the nonbonded
cutoff, and is translated back to its site after every integration chunk so copies never meet.
A translation changes no energy or force, so each copy follows exactly its own dynamics.

Per system the job writes an MDTraj HDF5 file (:mod:`proseflow.physics.trajectory_io`). Frames are buffered in
memory and appended at every checkpoint (every ``checkpoint_interval_s`` of wall time): first the frames
are appended and flushed, then the checkpoint (OpenMM context checkpoint + frame counts) is replaced
atomically. A restarted job truncates each file to the checkpoint's frame count, restores the context and
continues; frames written before the checkpoint are never touched. A checkpoint records the setup it belongs to
(protocol, systems, start coordinates): one written for another setup is discarded and the run starts over. Outputs appear at their final paths
only when the whole run has finished (an atomic rename), so a killed or failed job never leaves an
artefact that looks complete.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
import zlib
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import openmm
from openmm import app, unit
from tqdm.auto import tqdm

from proseflow.physics import trajectory_io
from proseflow.physics.protocol import MDProtocol, as_steps  # noqa: F401 - MDProtocol is part of this module's API
from proseflow.physics.system import PAPER_FORCEFIELD, create_system, platform_by_name, platform_properties

log = logging.getLogger(__name__)

COPY_MARGIN_NM = 3.0
"""Extra gap between copies' bounding spheres beyond the cutoff, so a chunk of diffusion cannot close it."""
MAX_ABS_ENERGY_KJ_PER_MOL = 1e6
"""A copy whose potential energy leaves +-this (or is NaN) has blown up."""


class SimulationBlowUp(RuntimeError):
    """The integration produced NaN or absurd energies."""


def stable_seed(base_seed: int, *names: str) -> int:
    """A reproducible per-job seed (Python's hash() is salted per process)."""
    return (int(base_seed) * 1_000_003 + zlib.crc32("|".join(names).encode())) % (2**31 - 1)


@dataclass
class CopyLayout:
    """Which atoms of the combined system belong to which copy, and where each copy's lattice site is."""

    offsets: list[int]
    sizes: list[int]
    sites_nm: np.ndarray  # [n_copies, 3]

    def slices(self) -> list[slice]:
        return [slice(o, o + n) for o, n in zip(self.offsets, self.sizes, strict=True)]


def _radius_bound_nm(n_residues: int) -> float:
    """An upper bound on any atom's distance from the centroid of a (fully extended) peptide."""
    return 0.6 + 0.38 * n_residues / 2.0 + 0.5


def combine_copies(topologies: list[app.Topology], positions_nm: list[np.ndarray],
                   cutoff_nm: float) -> tuple[app.Topology, np.ndarray, CopyLayout]:
    """One topology holding every copy as its own chain, each centred on a lattice site."""
    spacing = 2 * max(_radius_bound_nm(t.getNumResidues()) for t in topologies) + cutoff_nm + COPY_MARGIN_NM
    side = math.ceil(len(topologies) ** (1 / 3) - 1e-9)
    sites = np.array([[i % side, (i // side) % side, i // side**2] for i in range(len(topologies))],
                     dtype=float) * spacing
    modeller = app.Modeller(app.Topology(), [])
    offsets, sizes = [], []
    for top, pos, site in zip(topologies, positions_nm, sites, strict=True):
        offsets.append(modeller.topology.getNumAtoms())
        sizes.append(top.getNumAtoms())
        modeller.add(top, (pos - pos.mean(axis=0) + site) * unit.nanometer)
    combined = np.asarray(modeller.positions.value_in_unit(unit.nanometer))
    return modeller.topology, combined, CopyLayout(offsets, sizes, sites)


def recentre(positions_nm: np.ndarray, layout: CopyLayout, cutoff_nm: float) -> np.ndarray:
    """Translate every copy's centroid back to its lattice site; fail if two copies came within the cutoff."""
    out = positions_nm.copy()
    centroids, radii = [], []
    for sl, site in zip(layout.slices(), layout.sites_nm, strict=True):
        c = positions_nm[sl].mean(axis=0)
        centroids.append(c)
        radii.append(np.linalg.norm(positions_nm[sl] - c, axis=1).max())
        out[sl] += site - c
    centroids, radii = np.array(centroids), np.array(radii)
    if len(centroids) > 1:
        gap = np.linalg.norm(centroids[:, None] - centroids[None], axis=-1) - radii[:, None] - radii[None]
        np.fill_diagonal(gap, np.inf)
        if gap.min() <= cutoff_nm:
            i, j = np.unravel_index(np.argmin(gap), gap.shape)
            raise RuntimeError(f"copies {i} and {j} came within the {cutoff_nm} nm cutoff; "
                               "increase COPY_MARGIN_NM or shorten recentre_interval_ps")
    return out


@dataclass
class MDSystem:
    """One system of a batched run: its name, structure and the final output path."""

    name: str
    topology: app.Topology
    positions_nm: np.ndarray
    output: Path
    extra_attrs: dict = field(default_factory=dict)


class _PerCopyEnergy:
    """Potential energy of single copies, each in its own single-copy context (exact per-copy energies)."""

    def __init__(self, systems: list[MDSystem]):
        cpu = openmm.Platform.getPlatformByName("CPU")
        self.contexts = [openmm.Context(create_system(s.topology), openmm.VerletIntegrator(0.001), cpu,
                                        {"Threads": "1"}) for s in systems]

    def __call__(self, i: int, positions_nm: np.ndarray) -> float:
        self.contexts[i].setPositions(positions_nm)
        return self.contexts[i].getState(getEnergy=True).getPotentialEnergy().value_in_unit(
            unit.kilojoule_per_mole)


def simulate(systems: list[MDSystem], protocol: MDProtocol, work_dir: str | os.PathLike,
             threads: int | None = None, progress: bool = True) -> list[Path]:
    """Run (or resume) the batched MD of ``systems``; move each finished trajectory to ``system.output``.

    ``work_dir`` holds the partial trajectories and the checkpoint; it is removed after success.
    With ``protocol.replicas = R > 1`` every system runs as R independent copies (own velocities and
    noise, same start) and its file holds the R trajectories one after another (protocol attributes
    ``replicas`` and ``frames_per_replica``; ``time`` restarts in each replica).
    """
    work_dir = Path(work_dir)
    if protocol.replicas > 1:
        return _simulate_replicas(systems, protocol, work_dir, threads, progress)
    if protocol.start_phi_psi_deg:  # one replica: the first start state
        systems = [replace(s, positions_nm=_start(s, protocol, 0)) for s in systems]
    work_dir.mkdir(parents=True, exist_ok=True)
    names = [s.name for s in systems]
    if len(set(names)) != len(names):
        raise ValueError(f"duplicate system names in one MD job: {names}")
    n_frames, steps_per_frame, chunk = protocol.n_frames, protocol.steps_per_frame, protocol.chunk_steps
    cutoff = PAPER_FORCEFIELD.nonbonded_cutoff_nm

    topology, positions, layout = combine_copies([s.topology for s in systems],
                                                 [s.positions_nm for s in systems], cutoff)
    system = create_system(topology)
    platform = platform_by_name(protocol.platform)
    integrator = openmm.LangevinMiddleIntegrator(protocol.temperature_K * unit.kelvin,
                                                 protocol.friction_per_ps / unit.picosecond,
                                                 protocol.timestep_fs * unit.femtosecond)
    integrator.setRandomNumberSeed(protocol.seed)
    context = openmm.Context(system, integrator, platform, platform_properties(platform, threads))
    per_copy = _PerCopyEnergy(systems)

    record = {
        **asdict(protocol), "forcefield": PAPER_FORCEFIELD.as_dict(), "integrator": "LangevinMiddleIntegrator",
        "openmm_version": openmm.__version__, "platform": platform.getName(), "n_copies_in_context": len(systems),
        "copies": names, "frames_saved_after_burn_in": True,
    }
    partials = [work_dir / f"{s.name}.h5" for s in systems]
    ckpt_path = work_dir / "checkpoint.bin"

    setup = _setup_key(protocol, systems, platform.getName())
    checkpoint = _read_checkpoint(ckpt_path) if ckpt_path.exists() else None
    if checkpoint and not _checkpoint_matches(checkpoint[0], ckpt_path, setup, names):
        for p in [ckpt_path, *partials]:
            p.unlink(missing_ok=True)
        checkpoint = None
    if checkpoint:
        header, state = checkpoint
        frames_done = int(header["frames_done"])
        context.loadCheckpoint(state)
        for p in partials:
            trajectory_io.truncate(p, frames_done)
        log.info("resuming %s from checkpoint at frame %d/%d", names, frames_done, n_frames)
    else:
        context.setPositions(positions)
        if protocol.minimize:
            openmm.LocalEnergyMinimizer.minimize(context, 10.0, 0)
        context.setVelocitiesToTemperature(protocol.temperature_K * unit.kelvin, protocol.seed)
        _run_steps(context, protocol.burn_in_steps, chunk, layout, cutoff, systems, 0)
        for s, p in zip(systems, partials, strict=True):
            trajectory_io.create(p, s.topology, {**record, **s.extra_attrs, "system": s.name})
        frames_done = 0
        _write_checkpoint(context, frames_done, ckpt_path, setup)

    buffer: list[tuple[np.ndarray, float]] = []
    last_ckpt = time.monotonic()
    t_run, frames_at_start = time.monotonic(), frames_done
    bar = tqdm(total=n_frames, initial=frames_done, desc=f"MD {names[0]}" + ("..." if len(names) > 1 else ""),
               unit="frame", disable=not progress, mininterval=5)
    step0 = protocol.burn_in_steps
    while frames_done + len(buffer) < n_frames:
        frame = frames_done + len(buffer)
        x = _run_steps(context, steps_per_frame, chunk, layout, cutoff, systems, step0 + frame * steps_per_frame)
        buffer.append((x, (frame + 1) * protocol.save_interval_ps))
        bar.update(1)
        done = frames_done + len(buffer) == n_frames
        if done or time.monotonic() - last_ckpt >= protocol.checkpoint_interval_s:
            frames_done = _flush(buffer, systems, partials, layout, per_copy, step0, steps_per_frame,
                                 protocol.save_interval_ps)
            buffer.clear()
            _write_checkpoint(context, frames_done, ckpt_path, setup)
            last_ckpt = time.monotonic()
    bar.close()
    elapsed = time.monotonic() - t_run
    if frames_done > frames_at_start and elapsed > 0:
        rate = (frames_done - frames_at_start) * steps_per_frame / elapsed
        for p in partials:  # measured on this machine, for comparisons at equal wall time
            trajectory_io.update_protocol(p, md_steps_per_s=rate, md_copy_steps_per_s=rate * len(systems))

    for s, p in zip(systems, partials, strict=True):
        s.output.parent.mkdir(parents=True, exist_ok=True)
        os.replace(p, s.output)
    shutil.rmtree(work_dir)
    return [s.output for s in systems]


def _simulate_replicas(systems: list[MDSystem], protocol: MDProtocol, work_dir: Path, threads, progress) -> list[Path]:
    n = protocol.replicas
    parts_dir = work_dir.with_name(work_dir.name + ".replicas")
    copies = [MDSystem(f"{s.name}.r{k}", s.topology, _start(s, protocol, k), parts_dir / f"{s.name}.r{k}.h5",
                       {**s.extra_attrs, "replica": k})
              for s in systems for k in range(n)]
    stamp = parts_dir / "setup.json"  # finished parts of a previous try are kept only for the same setup
    setup = _setup_key(protocol, copies)
    if parts_dir.exists() and _stamped_setup(stamp) != setup:
        log.warning("%s: replicas of a previous try with another protocol, structure or start state; discarded",
                    parts_dir)
        shutil.rmtree(parts_dir)
    parts_dir.mkdir(parents=True, exist_ok=True)
    stamp.with_suffix(".tmp").write_text(json.dumps({"setup": setup}))
    os.replace(stamp.with_suffix(".tmp"), stamp)
    if not all(c.output.exists() for c in copies):  # else a previous run finished them and died later
        simulate(copies, replace(protocol, replicas=1, start_phi_psi_deg=()), work_dir, threads, progress)
    for i, s in enumerate(systems):
        s.output.parent.mkdir(parents=True, exist_ok=True)
        trajectory_io.concatenate([c.output for c in copies[i * n : (i + 1) * n]], s.output,
                                  replicas=n, frames_per_replica=protocol.n_frames, system=s.name,
                                  start_phi_psi_deg=[list(v) for v in protocol.start_phi_psi_deg])
    shutil.rmtree(parts_dir)
    return [s.output for s in systems]


def _stamped_setup(stamp: Path) -> str | None:
    try:
        return json.loads(stamp.read_text())["setup"]
    except (OSError, ValueError, KeyError, TypeError):  # missing, or cut short by a kill: not this setup
        return None


def _start(system: MDSystem, protocol: MDProtocol, replica: int) -> np.ndarray:
    """Replica ``replica``'s start: the built structure, or its backbone set to a start state (then minimised
    with the rest by :func:`simulate`)."""
    if not protocol.start_phi_psi_deg:
        return system.positions_nm
    from proseflow.physics.structures import set_backbone_dihedrals

    phi, psi = protocol.start_phi_psi_deg[replica % len(protocol.start_phi_psi_deg)]
    return set_backbone_dihedrals(system.topology, system.positions_nm, phi, psi)


def _run_steps(context, n_steps, chunk, layout, cutoff, systems, first_step) -> np.ndarray:
    """Integrate ``n_steps`` in chunks, re-centring copies after each; returns positions (nm)."""
    done = 0
    x = None
    while done < n_steps:
        k = min(chunk, n_steps - done)
        try:
            context.getIntegrator().step(k)
        except openmm.OpenMMException as e:  # "Particle coordinate is NaN"
            raise SimulationBlowUp(f"MD blew up between steps {first_step + done} and {first_step + done + k} "
                                   f"in systems {', '.join(s.name for s in systems)}: {e}") from None
        done += k
        state = context.getState(getPositions=True, getEnergy=True)
        x = state.getPositions(asNumpy=True).value_in_unit(unit.nanometer)
        e = state.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole)
        if not np.isfinite(x).all() or not math.isfinite(e) or abs(e) > MAX_ABS_ENERGY_KJ_PER_MOL * len(systems):
            bad = [s.name for s, sl in zip(systems, layout.slices(), strict=True) if not np.isfinite(x[sl]).all()]
            raise SimulationBlowUp(
                f"MD blew up at step {first_step + done} (potential energy {e:.4g} kJ/mol"
                f"{'; non-finite positions in ' + ', '.join(bad) if bad else ''}) in systems "
                f"{', '.join(s.name for s in systems)}")
        x = recentre(np.asarray(x), layout, cutoff)
        context.setPositions(x)
    if x is None:
        x = context.getState(getPositions=True).getPositions(asNumpy=True).value_in_unit(unit.nanometer)
    return np.asarray(x)


def _flush(buffer, systems, partials, layout, per_copy, step0, steps_per_frame, save_interval_ps) -> int:
    """Append buffered frames to every system's file; check every copy's energy. Returns frames on disk."""
    frames = np.stack([b[0] for b in buffer])
    times = np.array([b[1] for b in buffer])
    n = 0
    for i, (s, p, sl) in enumerate(zip(systems, partials, layout.slices(), strict=True)):
        xs = frames[:, sl] - layout.sites_nm[i]  # the copy's own frame: its lattice site moved to the origin
        energies = np.array([per_copy(i, xi) for xi in xs])
        bad = ~np.isfinite(energies) | (np.abs(energies) > MAX_ABS_ENERGY_KJ_PER_MOL)
        if bad.any():
            k = int(np.flatnonzero(bad)[0])
            step = step0 + int(round(times[k] / save_interval_ps)) * steps_per_frame
            raise SimulationBlowUp(f"MD of {s.name} blew up at step {step} (t = {times[k]:.1f} ps): "
                                   f"potential energy {energies[k]:.4g} kJ/mol")
        n = trajectory_io.append(p, xs, times, energies)
    return n


def _setup_key(protocol: MDProtocol, systems: list[MDSystem], platform_name: str = "") -> str:
    """What a checkpoint is only valid for: the protocol (bar how often it checkpoints; numbers as floats, so 20 and
    20.0 are one setting), the systems and their start coordinates (a rebuilt structure or a changed start state is
    another run), and the OpenMM platform and version that wrote it (OpenMM's checkpoints are tied to both)."""
    import hashlib

    def number(v):
        return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else v

    settings = {k: number(v) for k, v in asdict(protocol).items() if k != "checkpoint_interval_s"}
    h = hashlib.sha256(json.dumps([settings, platform_name, openmm.__version__ if platform_name else ""],
                                  sort_keys=True).encode())
    for s in systems:
        h.update(s.name.encode())
        h.update(np.round(np.asarray(s.positions_nm, dtype=np.float64), 6).tobytes())
    return h.hexdigest()


def _checkpoint_matches(header: dict, path: Path, setup: str, names: list[str]) -> bool:
    """False (and says so) when the checkpoint in ``path`` (its ``header``) was written for another setup: the caller
    starts over."""
    written = header.get("setup")
    if written is None:  # written before checkpoints recorded their setup: nothing to check it against
        log.warning("%s: checkpoint records no setup; resuming it as it is", path)
        return True
    if written != setup:
        log.warning("%s: checkpoint of %s was written for another protocol, structure or start state; its partial "
                    "trajectories are discarded and the run starts over", path, names)
        return False
    return True


def _write_checkpoint(context, frames_done: int, path: Path, setup: str) -> None:
    """One file holds the frame count, the setup it belongs to and the OpenMM state, replaced atomically so they
    never disagree."""
    header = json.dumps({"frames_done": frames_done, "setup": setup, "wall_time": time.time()}).encode()
    tmp = path.with_suffix(".tmp")
    with open(tmp, "wb") as fh:
        fh.write(header + b"\n" + context.createCheckpoint())
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _read_checkpoint(path: Path) -> tuple[dict, bytes]:
    """(header: frame count, setup, wall time; the OpenMM state) of a checkpoint file."""
    header, state = path.read_bytes().split(b"\n", 1)
    return json.loads(header), state
