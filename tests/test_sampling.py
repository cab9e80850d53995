"""Flow proposals and the flow/target adapters SMC runs on: exact log q, forces = -grad energy, SMC budget."""

import numpy as np
import pytest
import torch

from proseflow.flow.model import ProseFlow
from proseflow.flow.preprocess import proposal_log_prob_nm, to_nm
from proseflow.flow.train import TrainConfig, flow_config
from proseflow.physics.energy import make_energy
from proseflow.samplers.proposals import (
    FlowExtendedEnergy,
    TargetExtendedEnergy,
    draw_proposals,
    run_smc,
    system_batch,
)

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def flow():
    torch.manual_seed(0)
    model = ProseFlow(flow_config(TrainConfig(model_preset="tiny")))
    with torch.no_grad():  # move away from the identity so the test has teeth
        for _name, p in model.named_parameters():
            if p.dim() > 1:
                p.add_(0.02 * torch.randn_like(p))
    return model.eval()


def test_proposals_log_q_is_the_density_of_the_returned_sample(flow, peptide):
    top, _ = peptide("AA")
    p = draw_proposals(flow, top, 40, batch_size=16, seed=3, progress=False)
    assert p.positions_nm.shape == (40, 23, 3)
    batch = system_batch(top, 40)
    x = torch.tensor(p.x_flow)
    with torch.no_grad():
        log_q = proposal_log_prob_nm(flow.log_prob(x, batch).double(), x.double(), batch["mask"])
        nm = to_nm(x, batch["mask"]).numpy()
    np.testing.assert_allclose(p.log_q, log_q.numpy(), rtol=1e-5, atol=1e-3)
    # returned configurations are the centred samples, mirrored where every centre was wrong-handed
    mirrored = ~np.isclose(p.positions_nm, nm, atol=1e-5).all(axis=(1, 2))
    np.testing.assert_allclose(p.positions_nm[mirrored], -nm[mirrored], atol=1e-5)
    assert mirrored.sum() == p.n_chirality_fixed
    assert np.allclose(p.positions_nm.mean(axis=1), 0, atol=1e-5)
    again = draw_proposals(flow, top, 40, batch_size=40, seed=3, progress=False)
    np.testing.assert_allclose(again.log_q, p.log_q, rtol=1e-5)  # seeded, batch size does not matter


def _check_forces(energy, x, h=1e-4, n=5, rtol=2e-2):
    e, f = energy.energy_and_forces(x)
    rng = np.random.default_rng(0)
    for _ in range(n):
        i, d = rng.integers(x.shape[1]), rng.integers(3)
        xp, xm = x.copy(), x.copy()
        xp[:, i, d] += h
        xm[:, i, d] -= h
        fd = -(energy.energy_and_forces(xp)[0] - energy.energy_and_forces(xm)[0]) / (2 * h)
        np.testing.assert_allclose(f[:, i, d], fd, rtol=rtol, atol=0.05 * np.abs(f).mean())


def test_flow_and_target_forces_are_minus_the_gradient(flow, peptide):
    top, pos = peptide("AA")
    rng = np.random.default_rng(1)
    x = (pos[None] / 0.35 + 0.02 * rng.standard_normal((3, *pos.shape))).astype(np.float64)
    _check_forces(FlowExtendedEnergy(flow, top), x, h=1e-3)
    _check_forces(TargetExtendedEnergy(make_energy(top, 310.0, backend="torch")), x, h=1e-5)


def test_smc_spends_one_evaluation_per_particle_and_level(flow, peptide):
    top, _ = peptide("AA")
    energy = make_energy(top, 310.0, backend="torch")
    result, positions, e_kT, n_fixed, n_unfixable, ok = run_smc(flow, top, energy, 12, "mala", seed=0,
                                                                 n_levels=3, step_size=1e-6,
                                                                 max_target_energy=None)  # untrained flow
    assert result.t_schedule[-1] == 1.0
    assert result.n_energy_evals == 12 * (1 + 3)
    assert positions.shape == (12, 23, 3) and np.allclose(positions.mean(axis=1), 0, atol=1e-4)
    # the reported energies are the force field's, in kT, of the returned (possibly mirrored) configurations
    np.testing.assert_allclose(e_kT, energy.energy_kT(positions.astype(np.float64)), rtol=1e-4, atol=1e-3)
