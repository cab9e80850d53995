"""The PyTorch energy equals OpenMM (Reference platform, double precision) term by term, with forces."""

from __future__ import annotations

import functools
import math
import os

import numpy as np
import openmm
import pytest
import torch
from openmm import app, unit

from proseflow.physics.energy_torch import TorchEnergy, UnsupportedForceError
from proseflow.physics.structures import build_peptide
from proseflow.physics.system import create_system, forcefield, kT_kJ_per_mol

torch.set_num_threads(1)
TEMPERATURE_K = 310.0
LETTERS = "ACDEFGHIKLMNPQRSTVWY"
# Every amino acid once at the N terminus and once at the C terminus, plus the paper's example decapeptide.
SEQUENCES = [LETTERS[i] + LETTERS[(i + 1) % 20] for i in range(20)] + ["GYDPETGTWG"]
ENERGY_RTOL = 1e-6  # float64, per term and total, relative to OpenMM
FORCE_RTOL = 1e-7  # float64, max |dF| relative to max |F| of the frame
# float32, |dE| relative to the sum over terms of |E_term|: minimised and MD frames (seen <= 5e-7), then
# randomly displaced frames (clashes up to 1e9 kJ/mol; seen <= 1e-5)
FLOAT32_ENERGY_RTOL = 2e-6
FLOAT32_CLASH_ENERGY_RTOL = 1e-4
FLOAT32_FORCE_RTOL = 1e-4  # float32, max |dF| relative to max |F| of the frame, plus ...
FLOAT32_FORCE_ATOL_KT_NM = 0.1  # ... this absolute slack (seen: <= 0.04 kT/nm on minimised / MD frames)


def _reference_context(system: openmm.System) -> tuple[openmm.Context, list[str]]:
    system = openmm.XmlSerializer.clone(system)
    names = []
    for group, force in enumerate(system.getForces()):
        force.setForceGroup(group)
        names.append(force.getName())
    context = openmm.Context(system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName("Reference"))
    return context, names


def _openmm_energies(context, names, positions_nm) -> tuple[dict[str, float], float, np.ndarray]:
    context.setPositions(positions_nm)
    terms = {name: context.getState(getEnergy=True, groups={g}).getPotentialEnergy().value_in_unit(
        unit.kilojoule_per_mole) for g, name in enumerate(names)}
    state = context.getState(getEnergy=True, getForces=True)
    forces = state.getForces(asNumpy=True).value_in_unit(unit.kilojoule_per_mole / unit.nanometer)
    return terms, state.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole), np.asarray(forces)


def _md_frames(system, positions_nm, steps=(100, 200, 300), seed=1) -> list[np.ndarray]:
    integrator = openmm.LangevinMiddleIntegrator(TEMPERATURE_K, 1.0, 0.001)
    integrator.setRandomNumberSeed(seed)
    context = openmm.Context(system, integrator, openmm.Platform.getPlatformByName("Reference"))
    context.setPositions(positions_nm)
    context.setVelocitiesToTemperature(TEMPERATURE_K, seed)
    frames, done = [], 0
    for n in steps:
        integrator.step(n - done)
        done = n
        frames.append(context.getState(getPositions=True).getPositions(asNumpy=True).value_in_unit(unit.nanometer))
    return [np.asarray(f) for f in frames]


@functools.cache
def _case(sequence: str):
    """System, torch energy, and frames: minimised, MD at 310 K, randomly displaced (high energy)."""
    topology, minimised_nm = build_peptide(sequence)
    system = create_system(topology)
    rng = np.random.default_rng(sum(map(ord, sequence)))
    frames = [minimised_nm, *_md_frames(system, minimised_nm)]
    frames += [minimised_nm + sigma * rng.standard_normal(minimised_nm.shape) for sigma in (0.02, 0.1)]
    return system, np.stack(frames), TorchEnergy(system, TEMPERATURE_K)


@pytest.mark.parametrize("sequence", SEQUENCES)
def test_float64_terms_total_and_forces_equal_openmm(sequence):
    system, frames, energy = _case(sequence)
    context, names = _reference_context(system)
    assert energy.term_names == names
    terms = {k: v.numpy() for k, v in energy.energy_terms_kJ(frames).items()}
    total_kT, forces_kT_nm = (t.numpy() for t in energy.energy_and_forces_kT(frames))
    kT = kT_kJ_per_mol(TEMPERATURE_K)
    for b, positions_nm in enumerate(frames):
        ref_terms, ref_total, ref_forces = _openmm_energies(context, names, positions_nm)
        for name, ref in ref_terms.items():
            assert terms[name][b] == pytest.approx(ref, rel=ENERGY_RTOL, abs=1e-9), (name, b)
        assert total_kT[b] * kT == pytest.approx(ref_total, rel=ENERGY_RTOL), b
        force_error = np.abs(forces_kT_nm[b] * kT - ref_forces).max()
        assert force_error <= FORCE_RTOL * np.abs(ref_forces).max(), (b, force_error)


@pytest.mark.parametrize("sequence", ["AC", "GYDPETGTWG"])
def test_float32_within_stated_tolerance(sequence):
    system, frames, energy64 = _case(sequence)
    energy32 = TorchEnergy(system, TEMPERATURE_K, dtype=torch.float32)
    terms64 = energy64.energy_terms_kJ(frames)
    scale_kJ = sum(t.abs() for t in terms64.values()).numpy()
    e64, f64 = (t.numpy() for t in energy64.energy_and_forces_kT(frames))
    e32, f32 = (t.double().numpy() for t in energy32.energy_and_forces_kT(frames))
    kT = kT_kJ_per_mol(TEMPERATURE_K)
    relative_error = np.abs(e32 - e64) * kT / scale_kJ
    assert np.all(relative_error[:4] <= FLOAT32_ENERGY_RTOL) and np.all(relative_error <= FLOAT32_CLASH_ENERGY_RTOL)
    for b in range(len(frames)):
        tolerance = FLOAT32_FORCE_RTOL * np.abs(f64[b]).max() + FLOAT32_FORCE_ATOL_KT_NM
        assert np.abs(f32[b] - f64[b]).max() <= tolerance, b


def test_kT_units_numpy_input_and_chunking():
    system, frames, energy = _case("AC")
    chunked = TorchEnergy(system, TEMPERATURE_K, chunk_size=2)
    e_kJ = energy.energy_kJ(frames)
    np.testing.assert_allclose(chunked.energy_kT_numpy(frames), e_kJ.numpy() / kT_kJ_per_mol(TEMPERATURE_K),
                               rtol=1e-12)
    np.testing.assert_allclose(chunked.energy_and_forces_kT(frames)[1], energy.energy_and_forces_kT(frames)[1],
                               rtol=1e-10, atol=1e-8)
    assert energy.energy_kT_numpy(frames[0]).shape == (1,)


def test_from_sequence_and_differentiable():
    energy = TorchEnergy.from_sequence("AC", TEMPERATURE_K)
    _, frames, _ = _case("AC")
    x = torch.tensor(frames, requires_grad=True)
    energy.energy_kT(x).sum().backward()
    np.testing.assert_allclose(-x.grad.numpy(), energy.energy_and_forces_kT(frames)[1].numpy(), rtol=1e-12)


def test_overlapping_atoms_give_inf_or_huge_never_nan():
    system, frames, energy = _case("WY")
    heavy = [i for i in range(system.getNumParticles()) if system.getParticleMass(i).value_in_unit(unit.dalton) > 2]
    x = np.repeat(frames[:1], 3, axis=0)
    x[0, heavy[5]] = x[0, heavy[0]]  # exact overlap of two non-bonded heavy atoms
    x[1, heavy[5]] = x[1, heavy[0]] + 1e-4  # near overlap
    x[2, 1] = x[2, 0]  # exact overlap of bonded atoms: an undefined angle (NaN in OpenMM)
    for dtype in (torch.float64, torch.float32):
        model = TorchEnergy(system, TEMPERATURE_K, dtype=dtype)
        e, f = model.energy_and_forces_kT(x)
        assert not torch.isnan(e).any() and not torch.isnan(f).any()
        assert torch.all((e == math.inf) | (e > 1e10)), e
        assert torch.all(f[e == math.inf] == 0)
        assert not any(torch.isnan(t).any() for t in model.energy_terms_kJ(x).values())


def test_non_finite_input_raises():
    _, frames, energy = _case("AC")
    bad = frames.copy()
    bad[1, 3, 0] = np.nan
    with pytest.raises(ValueError, match="NaN or inf"):
        energy.energy_kT(bad)
    bad[1, 3, 0] = np.inf
    with pytest.raises(ValueError):
        energy.energy_and_forces_kT(bad)
    with pytest.raises(ValueError, match="positions must be"):
        energy.energy_kT(frames[:, :5])


@pytest.mark.parametrize("files, refused", [
    (("amber14-all.xml", "implicit/gbn2.xml"), "CustomGBForce"),
    (("amber14-all.xml", "implicit/obc2.xml"), "Born radius expression"),
    (("amber14-all.xml", "implicit/obc1.xml", "CustomExternalForce"), "CustomExternalForce"),
])
def test_unsupported_forces_are_refused_by_name(files, refused):
    topology, _ = build_peptide("AC", minimize=False)
    system = forcefield(tuple(f for f in files if f.endswith(".xml"))).createSystem(
        topology, nonbondedMethod=app.CutoffNonPeriodic, nonbondedCutoff=2.0 * unit.nanometer, constraints=None)
    if "CustomExternalForce" in files:
        system.addForce(openmm.CustomExternalForce("x^2"))
    with pytest.raises(UnsupportedForceError, match=refused):
        TorchEnergy(system, TEMPERATURE_K)


def test_cmmotionremover_ignored_and_nocutoff_variant_exact():
    """NoCutoff: plain Coulomb and the unshifted GB pair expression; a CMMotionRemover adds nothing."""
    topology, positions_nm = build_peptide("KE", minimize=False)
    system = forcefield().createSystem(topology, nonbondedMethod=app.NoCutoff, constraints=None, removeCMMotion=True)
    energy = TorchEnergy(system, TEMPERATURE_K)
    context, names = _reference_context(system)
    frames = positions_nm[None] + 0.01 * np.random.default_rng(0).standard_normal((2, *positions_nm.shape))
    terms = energy.energy_terms_kJ(frames)
    for b, x in enumerate(frames):
        ref_terms, _, _ = _openmm_energies(context, names, x)
        for name in energy.term_names:
            assert terms[name][b].item() == pytest.approx(ref_terms[name], rel=ENERGY_RTOL)


def _synthetic_system(num_atoms=6, switch=True):
    system = openmm.System()
    rng = np.random.default_rng(3)
    for _ in range(num_atoms):
        system.addParticle(12.0)
    torsions = openmm.PeriodicTorsionForce()
    for n, phase in ((1, 1.0), (2, -0.4), (3, 2.5)):
        torsions.addTorsion(0, 1, 2, 3, n, phase, 3.0)
    nonbonded = openmm.NonbondedForce()
    nonbonded.setNonbondedMethod(openmm.NonbondedForce.CutoffNonPeriodic)
    nonbonded.setCutoffDistance(0.8)
    nonbonded.setReactionFieldDielectric(78.5)
    nonbonded.setUseSwitchingFunction(switch)
    nonbonded.setSwitchingDistance(0.6)
    for _ in range(num_atoms):
        nonbonded.addParticle(rng.uniform(-1, 1), rng.uniform(0.2, 0.35), rng.uniform(0.1, 1.0))
    nonbonded.addException(0, 1, 0.3, 0.3, 0.5)
    nonbonded.addException(0, 2, 0.0, 0.1, 0.0)
    system.addForce(torsions)
    system.addForce(nonbonded)
    return system


def test_torsion_phases_reaction_field_and_switch_exact():
    """Non-zero torsion phases (checks the dihedral sign), reaction field with eps_rf=78.5 and an LJ switch."""
    system = _synthetic_system()
    energy = TorchEnergy(system, TEMPERATURE_K)
    context, names = _reference_context(system)
    frames = np.random.default_rng(4).uniform(0, 0.9, (20, 6, 3))
    terms = energy.energy_terms_kJ(frames)
    _, forces = energy.energy_and_forces_kT(frames)
    kT = kT_kJ_per_mol(TEMPERATURE_K)
    for b, x in enumerate(frames):
        ref_terms, _, ref_forces = _openmm_energies(context, names, x)
        for name in names:
            assert terms[name][b].item() == pytest.approx(ref_terms[name], rel=ENERGY_RTOL, abs=1e-9)
        assert np.abs(forces[b].numpy() * kT - ref_forces).max() <= FORCE_RTOL * np.abs(ref_forces).max() + 1e-9


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_matches_cpu():
    system, frames, energy = _case("GYDPETGTWG")
    for dtype, rtol in ((torch.float64, 1e-10), (torch.float32, 1e-4)):
        cuda = TorchEnergy(system, TEMPERATURE_K, dtype=dtype, device="cuda")
        np.testing.assert_allclose(cuda.energy_kT_numpy(frames), energy.energy_kT_numpy(frames), rtol=rtol)


@pytest.mark.skipif(os.environ.get("PROSEFLOW_TEST_COMPILE") != "1", reason="torch.compile takes minutes on 2 cores")
def test_compiled_matches_eager():
    system, frames, energy = _case("AC")
    compiled = TorchEnergy(system, TEMPERATURE_K, compile=True, chunk_size=4)
    np.testing.assert_allclose(compiled.energy_kT_numpy(frames), energy.energy_kT_numpy(frames), rtol=1e-10)
    np.testing.assert_allclose(compiled.energy_and_forces_kT(frames)[1], energy.energy_and_forces_kT(frames)[1],
                               rtol=1e-8, atol=1e-6)


def test_energy_api_torch_backend_matches_openmm_backend():
    from proseflow.physics.energy import make_energy

    system, frames, _ = _case("AC")
    with make_energy(system, TEMPERATURE_K, backend="torch", dtype="float64", device="cpu") as torch_energy:
        e, f = torch_energy.energy_and_forces_kT(frames)
        assert isinstance(e, np.ndarray) and f.shape == frames.shape
    with make_energy(system, TEMPERATURE_K, backend="openmm", platform="Reference", n_workers=1) as openmm_energy:
        e_ref, f_ref = openmm_energy.energy_and_forces_kT(frames)
    np.testing.assert_allclose(e, e_ref, rtol=ENERGY_RTOL)
    np.testing.assert_allclose(f, f_ref, rtol=1e-6, atol=1e-6 * np.abs(f_ref).max())
