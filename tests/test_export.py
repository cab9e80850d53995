"""Sample sets exported for molecular viewers: mdtraj reads back the coordinates; the CSV matches the .npz."""

import numpy as np
import pandas as pd
import pytest

from proseflow.physics.structures import build_peptide, write_pdb
from proseflow.samplers import export
from proseflow.samplers.sample_set import SampleSet
from proseflow.stages import run as stages

XTC_PRECISION_NM = 1e-3


@pytest.fixture(scope="module")
def system(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("export")
    topology, x0 = build_peptide("WA", minimize=False)
    structure = tmp / "WA.pdb"
    write_pdb(structure, topology, x0)
    rng = np.random.default_rng(0)
    n = 40
    positions = (x0 + rng.normal(scale=0.05, size=(n, *x0.shape))).astype(np.float32)
    energy = rng.normal(-50, 5, size=n)
    log_w = rng.normal(size=n)
    log_w[:3] = -np.inf  # dropped proposals
    log_w -= np.log(np.exp(log_w[np.isfinite(log_w)]).sum())
    return dict(tmp=tmp, structure=structure, positions=positions, energy=energy, log_w=log_w, n_atoms=len(x0))


def sample_set(system, log_weights, ess=0.5, **extras):
    """A sample set as the samplers write it (proseflow.samplers.sample_set)."""
    n = len(system["positions"])
    return SampleSet(positions_nm=system["positions"], energy_kT=system["energy"], log_weights=log_weights,
                     ess=ess, n_distinct=n, n_energy_evals=n, wall_time_s=1.0, temperature_K=310.0, extras=extras)


def _export(system, name, log_weights, ess=0.5, **extras):
    tmp = system["tmp"]
    npz = tmp / f"{name}.npz"
    sample_set(system, log_weights, ess, **extras).save(npz)
    paths = {k: tmp / f"{name}.{k}" for k in ("xtc", "pdb", "csv")}
    stages.run("export", "{}", {"samples": [npz], "structure": [system["structure"]]},
               {k: [str(p)] for k, p in paths.items()})
    return export.read_exported(paths["xtc"])


def test_snis_set_is_exported_as_its_resampled_draws(system):
    resampled = np.array([5, 5, 7, 39, 12, 5])
    traj, table = _export(system, "snis", log_weights=system["log_w"], resampled_indices=resampled, ess=0.3)
    assert traj.n_frames == len(resampled) == len(table) and traj.n_atoms == system["n_atoms"]
    np.testing.assert_allclose(traj.xyz, system["positions"][resampled], atol=XTC_PRECISION_NM)
    assert list(table.columns) == list(export.CSV_COLUMNS)
    assert list(table["frame"]) == list(range(len(resampled)))
    assert list(table["sample_index"]) == list(resampled)
    np.testing.assert_allclose(table["energy_kT"], system["energy"][resampled], rtol=1e-12)
    np.testing.assert_allclose(table["log_weight"], system["log_w"][resampled], rtol=1e-12)
    np.testing.assert_allclose(table["weight"], 1 / len(resampled))
    # the topology PDB is the structure's: same atoms, in order, holding the first frame
    import mdtraj

    top = mdtraj.load_topology(str(system["structure"]))
    assert [a.name for a in traj.topology.atoms] == [a.name for a in top.atoms]
    first = mdtraj.load_pdb(str(system["tmp"] / "snis.pdb"))
    np.testing.assert_allclose(first.xyz[0], system["positions"][5], atol=1e-4)


def test_smc_particles_are_exported_with_their_final_weights(system):
    traj, table = _export(system, "smc_mala", log_weights=np.full(40, -np.log(40)), ess=0.9)
    assert traj.n_frames == 40 == len(table)
    np.testing.assert_allclose(traj.xyz, system["positions"], atol=XTC_PRECISION_NM)
    np.testing.assert_allclose(table["energy_kT"], system["energy"], rtol=1e-12)
    np.testing.assert_allclose(table["log_weight"], -np.log(40))
    np.testing.assert_allclose(table["weight"], 1 / 40)
    # unequal final weights: the CSV's weights are their normalised exponentials
    frames = export.final_frames({"positions_nm": system["positions"], "log_weights": system["log_w"]})
    w = np.exp(system["log_w"])
    np.testing.assert_allclose(frames.weight, w / w.sum())


def test_a_set_without_draws_is_written_whole_with_weight_zero(system):
    traj, table = _export(system, "self_improve", log_weights=np.full(40, -np.inf),
                          resampled_indices=np.zeros(0, dtype=int))
    assert traj.n_frames == 40 and (table["weight"] == 0).all() and np.isneginf(table["log_weight"]).all()
    assert isinstance(table, pd.DataFrame)


def test_verify_reads_exports_and_names_an_incomplete_one(system, tmp_path, capsys):
    from proseflow.cli import main

    root = tmp_path / "results"
    out = root / "samples" / "WA"
    out.mkdir(parents=True)
    npz = out / "smc_ula.npz"
    sample_set(system, system["log_w"]).save(npz)
    export.export_sample_set(npz, system["structure"], out / "smc_ula.xtc", out / "smc_ula.pdb", out / "smc_ula.csv")
    assert main(["verify", str(root), "--no-progress"]) == 0
    assert "1 sample trajectory" in capsys.readouterr().out
    (out / "smc_ula.csv").unlink()  # the CSV is written last: without it the export was interrupted
    assert main(["verify", str(root), "--no-progress"]) == 1
    assert "smc_ula.xtc: export without its smc_ula.csv" in capsys.readouterr().out
