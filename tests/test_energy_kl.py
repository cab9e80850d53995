"""Energy (reverse-KL) fine-tuning: exact differentiable log q of the flow's own samples, and it lowers the energy."""

import numpy as np
import pytest
import torch

from proseflow.flow import FlowConfig, ProseFlow
from proseflow.flow.preprocess import proposal_log_prob_nm, to_nm
from proseflow.physics.energy_torch import TorchEnergy
from proseflow.physics.system import create_system
from proseflow.samplers.energy_kl import EnergyKLConfig, finetune_energy, reverse_kl_terms, soft_energy
from proseflow.samplers.proposals import system_batch

torch.set_num_threads(1)


def tiny_flow(seed=0):
    torch.manual_seed(seed)
    model = ProseFlow(FlowConfig.preset("tiny"))
    with torch.no_grad():
        for block in model.blocks:
            for lin in (block.proj_out, block.proj_start):
                lin.weight.normal_(0, 0.02)
    return model


def test_reverse_terms_are_exact_and_differentiable(peptide):
    top, pos = peptide("AA")
    model = tiny_flow()
    energy = TorchEnergy(create_system(top), 310.0)
    batch = system_batch(top, 8)
    u, log_q = reverse_kl_terms(model, batch, energy, 0.35, "gaussian", torch.Generator().manual_seed(0))
    # the same samples drawn again without grad; their density evaluated by the forward pass
    with torch.no_grad():
        x, log_q_flow, _ = model.sample(batch, generator=torch.Generator().manual_seed(0))
        z, logdet = model(x, batch)
        log_q_fwd = proposal_log_prob_nm(model.prior_log_prob(z, batch["mask"]).double() + logdet.double(),
                                         x.double(), batch["mask"], 0.35, "gaussian")
        u_ref = energy.energy_kT(to_nm(x, batch["mask"], 0.35).double())
    torch.testing.assert_close(log_q.detach(), log_q_fwd, rtol=1e-5, atol=1e-3)
    torch.testing.assert_close(u.detach(), u_ref, rtol=1e-5, atol=1e-3)
    (soft_energy(u, 1e3) + log_q).mean().backward()
    grads = [b.proj_out.weight.grad for b in model.blocks]
    assert all(g is not None and float(g.abs().max()) > 0 for g in grads)  # every block gets a gradient


def test_soft_energy_is_continuous_and_tames_the_tail():
    u = torch.tensor([-50.0, 999.0, 1000.0, 1001.0, 1e12], dtype=torch.float64)
    s = soft_energy(u, 1000.0)
    assert s[0] == -50 and s[1] == 999 and s[2] == 1000
    assert s[3] == pytest.approx(1000 + np.log(2)) and s[4] < 1030


def bonds_only(top):
    """The force field's bond term alone: a smooth target (no clash singularities) with a known minimum."""
    import openmm

    full = create_system(top)
    system = openmm.System()
    for i in range(full.getNumParticles()):
        system.addParticle(full.getParticleMass(i))
    bonds = next(f for f in full.getForces() if isinstance(f, openmm.HarmonicBondForce))
    system.addForce(openmm.XmlSerializer.deserialize(openmm.XmlSerializer.serialize(bonds)))
    return system


@pytest.mark.slow
def test_energy_finetuning_lowers_the_energy_of_samples(peptide):
    top, pos = peptide("AA")
    model = tiny_flow(1)
    energy = TorchEnergy(bonds_only(top), 310.0)
    batch = system_batch(top, 64)

    def median_u():
        with torch.no_grad():
            x, _, _ = model.sample(batch, generator=torch.Generator().manual_seed(5))
            return float(energy.energy_kT(to_nm(x, batch["mask"], 0.35).double()).median())

    before = median_u()
    rows = finetune_energy(model, top, energy, pos[None].astype(np.float32),
                           EnergyKLConfig(steps=20, batch_size=16, data_batch_size=8, lr=3e-3, nll_weight=0.0,
                                          energy_soft_kT=1e12, log_every=10), scale_nm=0.35, progress=False)
    after = median_u()
    assert len(rows) == 2 and np.isfinite(rows[-1]["kl_per_dim"])
    # bond energies of the untrained flow (~1e6 kT) fall by orders of magnitude (measured: ~8e5 -> ~3e3)
    assert after < 0.05 * before, (before, after)
    assert not model.training
    with pytest.raises(ValueError, match="not both 0"):
        EnergyKLConfig(kl_weight=0, nll_weight=0)
