"""Batched replica MD: copies are independent, checkpoints survive SIGKILL, blow-ups fail cleanly."""

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import h5py
import mdtraj
import numpy as np
import openmm
import pytest
from openmm_reference import energies_forces

from proseflow.physics import trajectory_io
from proseflow.physics.md import MDProtocol, MDSystem, SimulationBlowUp, combine_copies, recentre, simulate
from proseflow.physics.structures import write_pdb
from proseflow.stages.settings import MDSettings, from_json

TINY = MDProtocol(burn_in_ps=0.05, length_ps=0.5, save_interval_ps=0.05, seed=7, platform="CPU",
                  recentre_interval_ps=0.025)


def test_copies_have_the_energies_and_forces_of_each_system_alone(peptide):
    seqs = ["AA", "WG", "KCHP", "AA"]  # a replica of AA too
    tops, poss = zip(*(peptide(s) for s in seqs), strict=True)
    rng = np.random.default_rng(0)
    poss = [p + 0.01 * rng.standard_normal(p.shape) for p in poss]  # each copy its own configuration
    top, x, layout = combine_copies(list(tops), poss, cutoff_nm=2.0)
    e_all, f_all = energies_forces(top, x)
    e_sum = 0.0
    for t, sl in zip(tops, layout.slices(), strict=True):
        e, f = energies_forces(t, x[sl])
        e_sum += e
        np.testing.assert_allclose(f_all[sl], f, rtol=1e-9, atol=1e-8)
    assert e_all == pytest.approx(e_sum, rel=1e-10)
    # recentring is a pure translation of each copy
    shifted = x.copy()
    shifted[layout.slices()[1]] += 0.7
    back = recentre(shifted, layout, 2.0)
    for sl in layout.slices():
        d = back[sl] - shifted[sl]
        assert np.allclose(d, d[0])


def test_recentre_refuses_copies_within_cutoff(peptide):
    tops, poss = zip(*(peptide(s) for s in ["AA", "GG"]), strict=True)
    top, x, layout = combine_copies(list(tops), list(poss), cutoff_nm=2.0)
    x[layout.slices()[1]] = x[layout.slices()[0]][:1] + (x[layout.slices()[1]] - x[layout.slices()[1]].mean(0))
    with pytest.raises(RuntimeError, match="within the 2.0 nm cutoff"):
        recentre(x, layout, 2.0)


def test_batched_run_writes_mdtraj_files_with_protocol(tmp_path, peptide):
    systems = [MDSystem(s, *peptide(s), tmp_path / "out" / f"{s}.h5") for s in ["AA", "DGV"]]
    paths = simulate(systems, TINY, tmp_path / "work", threads=1, progress=False)
    assert not (tmp_path / "work").exists()
    for s, p in zip(systems, paths, strict=True):
        traj = mdtraj.load(str(p))
        assert traj.n_frames == 10 and traj.n_atoms == s.topology.getNumAtoms()
        np.testing.assert_allclose(traj.time, 0.05 * np.arange(1, 11), rtol=1e-5)
        data = trajectory_io.read(p)
        protocol = data["protocol"]
        assert protocol["temperature_K"] == 310.0 and protocol["friction_per_ps"] == 0.3
        assert protocol["timestep_fs"] == 1.0 and protocol["integrator"] == "LangevinMiddleIntegrator"
        assert protocol["openmm_version"] == openmm.__version__ and protocol["platform"] == "CPU"
        assert protocol["forcefield"]["forcefield_files"] == ["amber14-all.xml", "implicit/obc1.xml"]
        # what the file holds reads back as the protocol it ran (the SLURM check compares them this way)
        assert TINY.differences(protocol) == {}
        assert replace(TINY, length_ps=1.0).differences(protocol) == {"length_ps": (0.5, 1.0)}
        assert replace(TINY, replicas=2, start_phi_psi_deg=[[60, 45]]).differences(protocol, ignore=("replicas",)) \
            == {"start_phi_psi_deg": ([], [[60.0, 45.0]])}
        # the stored per-frame energies are the copy's own potential energy
        for k in (0, 9):
            e, _ = energies_forces(s.topology, data["positions_nm"][k].astype(np.float64))
            assert data["energy_kJ_per_mol"][k] == pytest.approx(e, rel=1e-4, abs=0.05)
        # frames are dynamics, not copies of the start
        assert np.abs(data["positions_nm"][-1] - data["positions_nm"][0]).max() > 0.01


def _md_cmd(structure, out, protocol):
    settings = MDSettings(split="reference", protocol=protocol, name="KW")
    return [sys.executable, "-m", "proseflow", "run", "md", "--settings", settings.to_json(),
            "--input", "structure", str(structure), "--output", "h5", str(out), "--threads", "1"]


@pytest.mark.slow
def test_sigkill_and_restart_resumes_from_checkpoint(tmp_path, peptide):
    write_pdb(tmp_path / "KW.pdb", *peptide("KW"))
    protocol = replace(TINY, length_ps=30.0, save_interval_ps=0.05, checkpoint_interval_s=0.5,
                       recentre_interval_ps=0.05)
    out = tmp_path / "KW.h5"
    work = tmp_path / ".work" / "KW"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src")}
    proc = subprocess.Popen(_md_cmd(tmp_path / "KW.pdb", out, protocol), env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpt = work / "checkpoint.bin"
    deadline = time.time() + 120
    frames_at_kill = 0
    while time.time() < deadline and proc.poll() is None:
        if ckpt.exists():
            frames_at_kill = int(json.loads(ckpt.read_bytes().split(b"\n", 1)[0])["frames_done"])
            if frames_at_kill >= 20:
                break
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before it could be killed: make it longer"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not out.exists()
    header = json.loads(ckpt.read_bytes().split(b"\n", 1)[0])
    n_ckpt = int(header["frames_done"])
    assert n_ckpt >= 20
    with h5py.File(work / "KW.h5", "r") as f:
        kept = f["coordinates"][:n_ckpt].copy()
        kept_e = f["potentialEnergy"][:n_ckpt].copy()

    subprocess.run(_md_cmd(tmp_path / "KW.pdb", out, protocol), env=env, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=300)
    assert out.exists() and not work.exists()
    data = trajectory_io.read(out)
    assert len(data["positions_nm"]) == protocol.n_frames == 600
    assert data["positions_nm"][:n_ckpt].tobytes() == kept.tobytes()  # byte for byte
    assert data["energy_kJ_per_mol"][:n_ckpt].tobytes() == kept_e.tobytes()
    np.testing.assert_allclose(data["time_ps"], 0.05 * np.arange(1, 601), rtol=1e-6)  # no gap, no duplicate
    steps = np.linalg.norm(np.diff(data["positions_nm"], axis=0), axis=-1).max(axis=1)
    assert steps[n_ckpt - 1] < 5 * np.median(steps)  # the continuation starts where the checkpoint was


def test_blow_up_names_system_and_step_and_leaves_no_output(tmp_path, peptide):
    top, pos = peptide("AA")
    bad = pos.copy()
    bad[1] = bad[0] + 0.002  # an H almost on top of N, not minimised: the run explodes
    protocol = replace(TINY, minimize=False, timestep_fs=4.0, burn_in_ps=0.0, length_ps=4.0, save_interval_ps=0.4,
                       recentre_interval_ps=0.4)
    out = tmp_path / "AA.h5"
    with pytest.raises(SimulationBlowUp, match=r"AA.*steps? \d+|steps? \d+.*AA"):
        simulate([MDSystem("AA", top, bad, out)], protocol, tmp_path / "work", threads=1, progress=False)
    assert not out.exists()


def test_replicas_are_independent_runs_concatenated(tmp_path, peptide):
    """replicas = 3: one file per system with 3 x n_frames frames; each replica its own dynamics (same start)."""
    top, pos = peptide("AA")
    protocol = replace(TINY, replicas=3)
    out = tmp_path / "AA.h5"
    # finished replica files of a previous try with another setup are not taken as this run's
    (tmp_path / "work.replicas").mkdir()
    (tmp_path / "work.replicas" / "setup.json").write_text('{"setup": "another protocol"}')
    for k in range(3):
        (tmp_path / "work.replicas" / f"AA.r{k}.h5").write_bytes(b"not this run's")
    simulate([MDSystem("AA", top, pos, out)], protocol, tmp_path / "work", threads=1, progress=False)
    data = trajectory_io.read(out)
    n = TINY.n_frames
    assert data["positions_nm"].shape == (3 * n, top.getNumAtoms(), 3)
    assert data["protocol"]["replicas"] == 3 and data["protocol"]["frames_per_replica"] == n
    assert trajectory_io.segments(out) == 3
    np.testing.assert_allclose(data["time_ps"].reshape(3, n), np.tile(data["time_ps"][:n], (3, 1)))
    last = data["positions_nm"].reshape(3, n, -1, 3)[:, -1]
    assert np.abs(last[0] - last[1]).max() > 1e-3 and np.abs(last[1] - last[2]).max() > 1e-3
    assert mdtraj.load(str(out)).n_frames == 3 * n  # still an MDTraj file
    # the training-store writer accepts it (time restarts per replica) and keeps every frame asked for
    from proseflow.data.dataset import open_store, store_index, write_store

    store = write_store(tmp_path / "AA.zarr", [("AA", out)], 2, expected_interval_ps=2 * TINY.save_interval_ps)
    assert store_index(store)[0]["n_frames"] == 3 * n // 2
    from proseflow.data.features import canonical_hydrogen_labels, equivalent_hydrogen_groups

    np.testing.assert_array_equal(open_store(store)["systems/AA/positions"][:],
                                  canonical_hydrogen_labels(data["positions_nm"][::2], equivalent_hydrogen_groups(top)))
    assert not (tmp_path / "work").exists() and not (tmp_path / "work.replicas").exists()
    with pytest.raises(ValueError, match="replicas"):
        replace(TINY, replicas=0)


@pytest.mark.slow
def test_a_checkpoint_of_another_setup_is_not_resumed(tmp_path, peptide):
    """A job killed with start state beta, restarted after the config moved it to alpha_L, starts over: the file's
    first frames are in alpha_L (resuming would have carried on in beta), and the log says why."""
    write_pdb(tmp_path / "KW.pdb", *peptide("KW"))
    beta = replace(TINY, length_ps=30.0, checkpoint_interval_s=0.0, start_phi_psi_deg=[[-150.0, 150.0]])
    out, ckpt = tmp_path / "KW.h5", tmp_path / ".work" / "KW" / "checkpoint.bin"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src")}
    proc = subprocess.Popen(_md_cmd(tmp_path / "KW.pdb", out, beta), env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if ckpt.exists() and int(json.loads(ckpt.read_bytes().split(b"\n", 1)[0])["frames_done"]) >= 5:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before it could be killed: make it longer"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert ckpt.exists() and not out.exists()

    alpha_l = replace(beta, length_ps=0.5, start_phi_psi_deg=[[60.0, 45.0]])
    run = subprocess.run(_md_cmd(tmp_path / "KW.pdb", out, alpha_l), env=env, capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "starts over" in run.stderr
    assert not ckpt.exists()
    data = trajectory_io.read(out)
    assert alpha_l.differences(data["protocol"], ignore=("seed",)) == {}
    phi = np.degrees(mdtraj.compute_phi(mdtraj.load(str(out)))[1])
    assert len(phi) == alpha_l.n_frames and (phi[:2] > 0).all(), phi[:2]


def test_replicas_start_in_their_backbone_states(tmp_path, peptide):
    """start_phi_psi_deg: replica k starts in state k mod 2 (alpha_L, then beta); after a short burn-in each
    replica's first frames are still in its basin, the file records the states, and a protocol round-trips them
    through the stage settings' JSON."""
    top, pos = peptide("AA")
    states = ((60.0, 45.0), (-150.0, 150.0))
    protocol = replace(TINY, replicas=3, length_ps=0.2, start_phi_psi_deg=[list(s) for s in states])
    assert protocol.start_phi_psi_deg == states  # lists (JSON, YAML) become tuples
    out = tmp_path / "AA.h5"
    simulate([MDSystem("AA", top, pos, out)], protocol, tmp_path / "work", threads=1, progress=False)
    data = trajectory_io.read(out)
    assert data["protocol"]["start_phi_psi_deg"] == [list(s) for s in states]
    assert protocol.differences(data["protocol"]) == {}
    phi = np.degrees(mdtraj.compute_phi(mdtraj.load(str(out)))[1][:, 0]).reshape(3, -1)
    assert (phi[0, :2] > 0).all() and (phi[2, :2] > 0).all()  # replicas 0 and 2: alpha_L
    assert (phi[1, :2] < -90).all()  # replica 1: beta
    settings = MDSettings(split="train", protocol=protocol, systems_per_job=1)
    assert from_json("md", settings.to_json()) == settings
    with pytest.raises(ValueError, match=r"outside \[-180, 180\]"):
        replace(TINY, start_phi_psi_deg=[[200.0, 0.0]])
    with pytest.raises(ValueError, match=r"\[phi, psi\]"):
        replace(TINY, start_phi_psi_deg=[[60.0]])
    with pytest.raises(ValueError, match="2 states but replicas is 1"):
        replace(TINY, start_phi_psi_deg=states)


def test_a_batch_starts_from_its_structure_file_written_once(tmp_path, peptide):
    """A training batch writes each system's PDB once and starts its MD from that file, so a rerun after a kill starts
    from the coordinates its checkpoint was written for (a rebuild elsewhere could differ in the last digits). Here the
    file left by an earlier try holds AA in alpha_L; build_peptide's AA is not there, so the frames say which was used."""
    from proseflow.physics.structures import set_backbone_dihedrals
    from proseflow.stages.run import run

    (tmp_path / "train.csv").write_text("sequence,length\nAA,2\n")
    top, pos = peptide("AA")
    assert (np.degrees(mdtraj.compute_phi(mdtraj.Trajectory(pos, mdtraj.Topology.from_openmm(top)))[1]) < 0).all()
    earlier = tmp_path / ".batch00000.tmp" / "AA.pdb"
    earlier.parent.mkdir()
    write_pdb(earlier, top, set_backbone_dihedrals(top, pos, 60.0, 45.0))
    pdb_bytes = earlier.read_bytes()
    settings = MDSettings(split="train", protocol=replace(TINY, length_ps=0.1), batch=0, systems_per_job=1)
    run("md", settings.to_json(), {"sequences": [str(tmp_path / "train.csv")]},
        {"batch": [str(tmp_path / "batch00000")]}, threads=1)
    assert (tmp_path / "batch00000" / "AA.pdb").read_bytes() == pdb_bytes
    phi = np.degrees(mdtraj.compute_phi(mdtraj.load(str(tmp_path / "batch00000" / "AA.h5")))[1])
    assert (phi[0] > 0).all(), phi[0]


def test_what_a_checkpoint_is_valid_for(peptide):
    """The setup key of a checkpoint: the same for the same run written 20 or 20.0, or checkpointing more often;
    another for another protocol, start coordinates or OpenMM platform."""
    from proseflow.physics.md import _setup_key

    top, pos = peptide("AA")
    run = [MDSystem("AA", top, pos, Path("AA.h5"))]
    key = _setup_key(replace(TINY, length_ps=1), run, "CPU")
    assert _setup_key(replace(TINY, length_ps=1.0, checkpoint_interval_s=5.0), run, "CPU") == key
    assert _setup_key(replace(TINY, length_ps=2.0), run, "CPU") != key
    assert _setup_key(replace(TINY, length_ps=1), run, "Reference") != key
    assert _setup_key(replace(TINY, length_ps=1), [replace(run[0], positions_nm=pos + 1e-4)], "CPU") != key
