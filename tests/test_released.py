"""The released Prose (issue 24): proseflow's arch="prose_released" with imported weights computes the authors'
function, checked against values their own code computed (tests/data/prose-fixture, README.md there).

The fixture is a small Prose (48 channels, 8 blocks x 1 layer, head_dim 16) with order-one random weights in the
released checkpoint's layout, and for AA, RLMM and DGVAHALS every model input and output, in float64 and as their
float32 code computes them.
"""

import io
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from proseflow.data.features import system_features
from proseflow.data.permutations import PERMUTATION_NAMES
from proseflow.flow.model import ProseFlow
from proseflow.flow.preprocess import proposal_log_prob_nm
from proseflow.flow.released import (
    PERMUTATION_KEYS,
    WeightsMismatchError,
    convert,
    flow_config_from,
    import_weights,
    load_released,
    read_state_dict,
)

FIXTURE = Path(__file__).parent / "data" / "prose-fixture"
CHECKPOINT = FIXTURE / "prose_fixture.pth"
PEPTIDES = ("AA", "RLMM", "DGVAHALS")
torch.set_num_threads(2)


@pytest.fixture(scope="module")
def model64():
    return load_released(CHECKPOINT, head_dim=16, dtype=torch.float64)


@pytest.fixture(scope="module")
def model32():
    return load_released(CHECKPOINT, head_dim=16)


def inputs(seq: str, dtype=torch.float64):
    """(recorded arrays, proseflow batch [4 copies]) with proseflow's own features of the fixture's structure and
    the authors' permutations (their side-chain orders) in proseflow's permutation rows."""
    from openmm.app import PDBFile

    d = np.load(FIXTURE / f"{seq}.npz")
    top = PDBFile(io.StringIO(str(d["pdb_text"]))).topology
    f = system_features(top, side_chains="released")
    n, b = len(d["atom_type"]), d["x_norm"].shape[0]
    perms = np.empty((len(PERMUTATION_NAMES), n), dtype=np.int64)  # theirs, as recorded
    for key, name in PERMUTATION_KEYS.items():
        perms[PERMUTATION_NAMES.index(name)] = d[f"perm__{key}"]
    np.testing.assert_array_equal(f["permutations"], perms)  # = the released side-chain orders of proseflow

    def rows(a):
        return torch.as_tensor(np.asarray(a))[None].expand(b, *np.shape(a)).contiguous()

    batch = {"mask": torch.ones(b, n, dtype=torch.bool), "atom_type": rows(f["atom_type"]),
             "residue_type": rows(f["residue_type"]), "residue_index": rows(f["residue_index"]),
             "chain_length": torch.full((b,), f["chain_length"]), "permutations": rows(perms)}
    return d, batch, f


@pytest.mark.parametrize("seq", PEPTIDES)
def test_features_agree_with_theirs(seq):
    """Same atom-type vocabulary, residue index and chain length; residue types differ only by the vocabulary
    order the importer maps (their three-letter alphabet vs proseflow's one-letter)."""
    from proseflow.flow.released import THREE_LETTER_ORDER
    from proseflow.physics.sequences import AMINO_ACIDS

    d, _, f = inputs(seq)
    np.testing.assert_array_equal(f["atom_type"], d["atom_type"])
    np.testing.assert_array_equal(f["residue_index"], d["aa_pos"])
    assert f["chain_length"] == int(d["seq_len"][0])
    theirs = [THREE_LETTER_ORDER.index(AMINO_ACIDS[r - 1]) + 1 for r in f["residue_type"]]
    np.testing.assert_array_equal(theirs, d["aa_type"])


@pytest.mark.parametrize("seq", PEPTIDES)
def test_released_side_chain_orders_give_their_permutations(seq):
    """proseflow's permutation builder with the released side-chain orders reproduces every permutation their code
    made for the fixture peptides (proseflow's own orders differ for some side chains: DIFFERENCES.md item 15)."""
    from openmm.app import PDBFile

    from proseflow.data.features import chemistry_permutations

    d = np.load(FIXTURE / f"{seq}.npz")
    top = PDBFile(io.StringIO(str(d["pdb_text"]))).topology
    released = chemistry_permutations(top, side_chains="released")
    for key, name in PERMUTATION_KEYS.items():
        np.testing.assert_array_equal(released[PERMUTATION_NAMES.index(name)], d[f"perm__{key}"], err_msg=key)


@pytest.mark.parametrize("seq", PEPTIDES)
def test_forward_matches_their_float64_values(model64, seq):
    """z, every block's output and log-det, and log q equal their float64 run to 1e-8."""
    d, batch, _ = inputs(seq)
    x = torch.as_tensor(d["x_norm"])
    with torch.no_grad():
        cond = model64.embed_cond({k: v[:1] for k, v in batch.items()})
        np.testing.assert_allclose(cond[0].numpy(), d["cond_embedding"], atol=1e-9, rtol=0)
        trimmed = model64.trim(batch)
        mask, perms = trimmed["mask"], trimmed["permutations"]
        systems = (model64.embed_cond(trimmed), trimmed.get("system_mask", mask), trimmed.get("system_permutations", perms))
        h = x
        for k, block in enumerate(model64.blocks):
            h, ld = block(h, mask, perms, systems)
            np.testing.assert_allclose(h.numpy(), d["block_z"][k], atol=1e-8, rtol=0, err_msg=f"block {k}")
            np.testing.assert_allclose(ld.numpy(), d["block_logdet"][k], atol=1e-8, rtol=0, err_msg=f"block {k}")
        z, logdet = model64(x, batch)
        log_q = model64.log_prob(x, batch)
    np.testing.assert_allclose(z.numpy(), d["z"], atol=1e-8, rtol=0)
    np.testing.assert_allclose(logdet.numpy(), d["dlogp"], atol=1e-8, rtol=0)
    np.testing.assert_allclose(log_q.numpy(), d["logq_norm"], atol=1e-8, rtol=0)
    n = x.shape[1]  # in nm: the density on R^3N (their logq_nm)
    np.testing.assert_allclose(log_q.numpy() - 3 * n * math.log(0.35), d["logq_nm"], atol=1e-8, rtol=0)


@pytest.mark.parametrize("seq", PEPTIDES)
def test_forward_matches_their_float32_code(model32, seq):
    d, batch, _ = inputs(seq)
    x = torch.as_tensor(d["x_norm"], dtype=torch.float32)
    with torch.no_grad():
        z, logdet = model32(x, batch)
        log_q = model32.log_prob(x, batch)
    np.testing.assert_allclose(z.double().numpy(), d["z_f32"], atol=1e-4, rtol=0)
    np.testing.assert_allclose(log_q.double().numpy(), d["logq_norm_f32"], atol=1e-4 * max(1, abs(d["logq_norm_f32"]).max() / 100))


@pytest.mark.parametrize("seq", PEPTIDES)
def test_samples_from_their_prior_noise(model64, seq):
    """x = f^-1(z) from their recorded prior noise (KV-cached reverse) equals their x_gen to 1e-6 (nm: 0.35 x)."""
    d, batch, _ = inputs(seq)
    z = torch.as_tensor(d["prior_z"])
    x, log_q, _ = model64.sample(batch, z=z)
    np.testing.assert_allclose(0.35 * x.numpy(), d["x_gen_nm"], atol=1e-6, rtol=0)
    np.testing.assert_allclose(log_q.numpy(), d["logq_gen"], atol=1e-7, rtol=0)


@pytest.mark.parametrize("seq", PEPTIDES)
def test_snis_log_weights_equal_theirs_up_to_one_constant(model64, seq):
    """Their SNIS proposal energy is -log q_aug + log chi_3(|c|) in normalised units; proseflow's log q is the
    density of the centred sample in nm (chi correction): the two differ by one constant per system, so the
    importance weights (and ESS) are the same."""
    d, batch, _ = inputs(seq)
    x = torch.as_tensor(d["x_norm_com"])
    with torch.no_grad():
        log_q_flow = model64.log_prob(x, batch)
    ours = proposal_log_prob_nm(log_q_flow, x, batch["mask"], 0.35, "chi").numpy()
    theirs = -d["energy_source_com"]
    diff = ours - theirs
    assert np.ptp(diff) < 1e-8, diff
    n = x.shape[1]
    assert diff[0] == pytest.approx(1.5 * math.log(n) - (3 * n - 3) * math.log(0.35), abs=1e-8)


def test_released_side_chain_orders_cover_all_twenty_residues():
    from proseflow.data.features import chemistry_permutations

    for seq in ("ACDEFGHIK", "LMNPQRSTVWY"):
        perms = chemistry_permutations(seq, side_chains="released")
        assert (np.sort(perms, axis=1) == np.arange(perms.shape[1])).all()


def test_samplers_build_batches_with_the_models_side_chain_orders(model32):
    """draw_proposals on the imported model uses the released permutations (system_batch(side_chains=...)): its log q
    of the samples equals the model's log_prob on a batch built with the authors' permutations."""
    from openmm.app import PDBFile

    from proseflow.samplers.proposals import draw_proposals, system_batch

    assert model32.config.side_chains == "released"
    d, batch, _ = inputs("RLMM", torch.float32)
    top = PDBFile(io.StringIO(str(d["pdb_text"]))).topology
    p = draw_proposals(model32, top, 8, batch_size=8, com_correction="gaussian", seed=0, progress=False)
    ours = system_batch(top, 8, side_chains="released")
    assert torch.equal(ours["permutations"], batch["permutations"][:1].expand(8, -1, -1))
    with torch.no_grad():
        lq = model32.log_prob(torch.as_tensor(p.x_flow), ours)
    lq_nm = proposal_log_prob_nm(lq.double(), torch.as_tensor(p.x_flow).double(), ours["mask"], 0.35, "gaussian")
    np.testing.assert_allclose(p.log_q, lq_nm.numpy(), rtol=1e-5, atol=1e-2)


def test_importer_writes_a_model_file_with_its_provenance(tmp_path):
    from proseflow.flow.checkpoint import load_model

    out = import_weights(CHECKPOINT, tmp_path / "model.pt", head_dim=16)
    model = load_model(out)
    assert model.config.arch == "prose_released" and model.meta["scale_nm"] == 0.35
    prov = model.meta["provenance"]
    assert prov["source"] == "imported" and prov["file"].endswith("prose_fixture.pth") and len(prov["sha256"]) == 64
    d, batch, _ = inputs("AA", torch.float32)
    with torch.no_grad():
        log_q = model.log_prob(torch.as_tensor(d["x_norm"], dtype=torch.float32), batch)
    np.testing.assert_allclose(log_q.double().numpy(), d["logq_norm_f32"], atol=1e-3)


def test_a_lightning_checkpoint_with_ema_weights_is_accepted(tmp_path):
    sd = torch.load(CHECKPOINT, weights_only=True)
    path = tmp_path / "last.ckpt"
    torch.save({"state_dict": sd, "current_model_state": {}, "epoch": 3}, path)
    assert read_state_dict(path).keys() == read_state_dict(CHECKPOINT).keys()


def test_a_truncated_or_renamed_state_dict_is_refused_naming_the_key(tmp_path):
    sd = read_state_dict(CHECKPOINT)
    cfg = flow_config_from(sd, head_dim=16)
    missing = {k: v for k, v in sd.items() if k != "blocks.7.proj_out.weight"}
    with pytest.raises(WeightsMismatchError, match=r"missing .*blocks\.7\.proj_out\.weight"):
        convert(missing, cfg)
    renamed = {(k.replace("to_beta", "to_b") if k.startswith("blocks.3.") else k): v for k, v in sd.items()}
    with pytest.raises(WeightsMismatchError, match=r"unexpected key.*blocks\.3\.attn_blocks\.0\.mha\.adaln\.to_b\.weight"):
        convert(renamed, cfg)
    reshaped = dict(sd)
    reshaped["blocks.2.proj_in.weight"] = torch.zeros(48, 4)
    with pytest.raises(WeightsMismatchError, match=r"blocks\.2\.proj_in\.weight: shape \(48, 4\) does not fit "
                                                   r"blocks\.2\.proj_in\.weight \(48, 3\)"):
        convert(reshaped, cfg)
    (tmp_path / "other.pth").write_bytes(b"")
    torch.save({"net.something": torch.zeros(2)}, tmp_path / "other.pth")
    with pytest.raises(WeightsMismatchError, match="not a Prose checkpoint"):
        read_state_dict(tmp_path / "other.pth")


def test_released_preset_has_the_papers_parameter_count():
    """288,117,560 parameters as released; proseflow holds each block's position table (256 x 384) where they
    hold one scalar times a fixed sinusoid: 8 x (256 x 384 - 1) more."""
    from proseflow.flow.config import FlowConfig
    from proseflow.flow.model import count_parameters

    with torch.device("meta"):
        n = count_parameters(ProseFlow(FlowConfig.preset("released")))
    assert n == 288_117_560 + 8 * (256 * 384 - 1)


def test_import_weights_command(tmp_path):
    """`python -m proseflow import-weights` writes the model file; a renamed state dict fails with exit 1, the key
    named, and no model file."""
    import subprocess
    import sys

    out = tmp_path / "m" / "model.pt"
    cmd = [sys.executable, "-m", "proseflow", "import-weights", str(CHECKPOINT), "--out", str(out), "--head-dim", "16"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert out.is_file() and (tmp_path / "m" / "provenance.json").is_file()
    sd = torch.load(CHECKPOINT, weights_only=True)
    bad = tmp_path / "renamed.pth"
    torch.save({k.replace("blocks.5.proj_out", "blocks.5.proj_output"): v for k, v in sd.items()}, bad)
    out2 = tmp_path / "n" / "model.pt"
    proc = subprocess.run([*cmd[:4], str(bad), "--out", str(out2), "--head-dim", "16"], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 1 and "blocks.5.proj_output.weight" in proc.stderr and not out2.exists()
