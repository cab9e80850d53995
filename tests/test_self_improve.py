"""Self-improvement: the regulariser, one real round through `proseflow run self_improve`, ESS gain on a known target, the pull."""

import copy
import json

import numpy as np
import pytest
import torch

from proseflow.cli import main
from proseflow.flow import ProseFlow
from proseflow.flow.checkpoint import load_model, save_model
from proseflow.flow.preprocess import preprocess_train
from proseflow.flow.train import TrainConfig, flow_config
from proseflow.physics.structures import write_pdb
from proseflow.samplers.proposals import system_batch
from proseflow.samplers.self_improve import (
    SelfImproveConfig,
    finetune,
    finetune_loss,
    self_improve,
)
from proseflow.stages.settings import SelfImproveSettings

torch.set_num_threads(1)


def tiny_flow(seed=0, perturb=0.05):
    """A tiny flow (training's permutation order) with random, small output weights: a non-trivial density."""
    torch.manual_seed(seed)
    model = ProseFlow(flow_config(TrainConfig(model_preset="tiny")))
    with torch.no_grad():
        for block in model.blocks:
            for lin in (block.proj_out, block.proj_start):
                lin.weight.normal_(0, perturb)
                lin.bias.normal_(0, perturb)
    model.meta = {"scale_nm": 0.35}  # what load_model gives every consumer: the scale comes from the model file
    return model.eval().requires_grad_(False)


def max_param_diff(a, b):
    return max(float((p - q).abs().max()) for p, q in zip(a.parameters(), b.parameters(), strict=True))


@torch.no_grad()
def param_distance(a, b):
    return float(sum(((p - q) ** 2).sum() for p, q in zip(a.parameters(), b.parameters(), strict=True)).sqrt())


class GaussianEnergy:
    """Energy-API stand-in: E/kT = |x|^2 / (2 s^2) of the centred configuration (nm), a known Gaussian target."""

    temperature_K = 300.0

    def __init__(self, s_nm):
        self.s = s_nm

    def energy_kT(self, x):
        return (np.asarray(x, dtype=np.float64) ** 2).sum(axis=(1, 2)) / (2 * self.s**2)


@pytest.fixture(scope="module")
def ag(peptide):
    return peptide("AG")


def training_batch(topology, positions_nm, n, seed=0):
    g = torch.Generator().manual_seed(seed)
    x_nm = torch.as_tensor(positions_nm, dtype=torch.float32)[None] + 0.02 * torch.randn(n, len(positions_nm), 3,
                                                                                         generator=g)
    batch = system_batch(topology, n)
    return preprocess_train(x_nm, batch["mask"], generator=g), batch


def test_paper_defaults():
    c = SelfImproveConfig()
    assert (c.n_rounds, c.n_samples, c.steps, c.batch_size, c.lr, c.reg_weight) == (4, 200_000, 250, 256, 5e-6, 0.5)


def test_regulariser_is_zero_with_zero_gradient_at_start(ag):
    topology, positions = ag
    initial = tiny_flow()
    model = copy.deepcopy(initial).requires_grad_(True)
    x, batch = training_batch(topology, positions, 8)
    loss, nll, reg = finetune_loss(model, initial, x, batch, reg_weight=0.5)
    # zero up to float64 round-off (the grad-enabled copy may take other attention kernels than the frozen one)
    assert float(reg.detach()) < 1e-12
    grad_reg = torch.autograd.grad(reg, list(model.parameters()), allow_unused=True)
    assert all(g is None or float(g.abs().max()) < 1e-5 for g in grad_reg)
    assert torch.isfinite(nll) and float(loss.detach()) == pytest.approx(float(nll.detach()), abs=1e-10)
    # the regulariser is positive once the model has moved
    with torch.no_grad():
        model.blocks[0].proj_out.bias.add_(0.1)
    assert float(finetune_loss(model, initial, x, batch, reg_weight=0.5)[2].detach()) > 0


def test_one_round_through_the_entry_point_real_energy(ag, tmp_path):
    """One round on a real dipeptide with the OpenMM energy, through the stage entry point."""
    topology, positions = ag
    model = tiny_flow()
    model_path, pdb = tmp_path / "model.pt", tmp_path / "AG.pdb"
    save_model(model, model_path, {"flow_config": model.config.to_dict(), "scale_nm": 0.35})
    write_pdb(pdb, topology, positions)
    improve = {"n_rounds": 1, "n_samples": 32, "steps": 3, "batch_size": 16, "lr": 1e-3, "n_final": 16,
               "sample_batch_size": 32}
    settings = SelfImproveSettings(improve=SelfImproveConfig(**improve), temperature_K=300.0, energy_backend="openmm",
                                   seed=1,
                                   device="cpu")
    rc = main(["run", "self_improve", "--settings", settings.to_json(), "--input", "model", str(model_path),
               "--input", "structure", str(pdb), "--output", "samples", str(tmp_path / "si.npz"),
               "--output", "model", str(tmp_path / "si" / "model.pt")])
    assert rc == 0

    tuned = load_model(tmp_path / "si" / "model.pt")
    assert max_param_diff(tuned, load_model(model_path)) > 0
    assert tuned.meta["self_improve"]["round"] == 1 and tuned.meta["scale_nm"] == 0.35
    rounds = json.loads((tmp_path / "si" / "rounds.json").read_text())
    assert len(rounds) == 1 and rounds[0]["n_energy_evals"] == 32 and 0 < rounds[0]["ess"] <= 1
    assert np.isfinite(rounds[0]["nll"]) and rounds[0]["reg"] >= 0
    d = np.load(tmp_path / "si.npz")
    assert d["positions_nm"].shape == (16, 20, 3) and d["log_weights"].shape == d["energy_kT"].shape == (16,)
    assert int(d["n_energy_evals"]) == 32 + 16 and float(d["temperature_K"]) == 300.0
    assert d["round_ess"].tolist() == [rounds[0]["ess"]] and d["round_n_energy_evals"].tolist() == [32]
    assert {"log_q", "resampled_indices", "ess", "n_nonfinite", "n_dropped", "wall_time_s"} <= set(d.files)


def test_fine_tuning_raises_ess_on_known_target(ag, tmp_path):
    """Fresh flow = N(0, 0.35 nm) per coordinate; target: N(0, 0.315 nm) on the centred configuration."""
    topology, _ = ag
    model = tiny_flow(perturb=0.0)
    cfg = SelfImproveConfig(n_rounds=2, n_samples=512, steps=25, batch_size=64, lr=1e-3, n_final=1024,
                            com_correction="gaussian", sample_batch_size=512)
    result = self_improve(model, topology, GaussianEnergy(0.315), cfg, tmp_path, seed=0, progress=False)
    ess0, ess_final = result["final"]["round_ess"][0], result["final"]["ess"]
    # exact: (rho sqrt(2 - rho^2))^57 = 0.351 for rho = 0.9 over 57 centred dimensions; the Kish estimate from 512
    # proposals scatters with a standard error of 0.038 (simulated), so 4 standard errors either side
    assert abs(ess0 - 0.351) < 4 * 0.038, ess0
    assert ess_final > 1.3 * ess0, (ess0, ess_final)  # 8-block tiny flow, seeds 0-2: x1.3 to x1.9 (lr 1e-2 overshoots)
    assert result["final"]["n_energy_evals"] == 2 * 512 + 1024
    assert max_param_diff(model, tiny_flow(perturb=0.0)) == 0  # the input model is left untouched


def test_regulariser_pulls_toward_initial(ag):
    """Data far from the model: without the regulariser the model moves away; with a huge weight it stays
    close to q_initial (in log q, which the term constrains directly, and in parameter distance)."""
    topology, positions = ag
    initial = tiny_flow()
    rng = np.random.default_rng(0)
    data = (0.8 * positions[None] + rng.normal(0, 0.03, (256, *positions.shape))).astype(np.float32)
    data -= data.mean(axis=1, keepdims=True)
    x, batch = training_batch(topology, data.mean(axis=0), 64, seed=1)  # held-out augmented batch
    distance, reg = {}, {}
    for weight in (0.0, 1e4):
        model = copy.deepcopy(initial).requires_grad_(True)
        cfg = SelfImproveConfig(steps=20, batch_size=32, lr=1e-3, reg_weight=weight)
        opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=cfg.betas, weight_decay=0.0)
        finetune(model, initial, opt, data, topology, cfg, 0.35, seed=0, device="cpu")
        distance[weight] = param_distance(model, initial)
        with torch.no_grad():
            reg[weight] = float(finetune_loss(model, initial, x, batch, weight)[2])
    assert reg[0.0] > 1e-2 and reg[1e4] < 1e-2 * reg[0.0], reg
    # parameter distance is a weaker check (8 blocks have directions that barely change log q on this data)
    assert distance[1e4] < 0.75 * distance[0.0], distance
