"""Training: the loss falls, a SIGKILLed run resumes exactly, EMA, two-rank DDP == one process."""

import csv
import dataclasses
import json
import os
import socket
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from proseflow.data import features
from proseflow.data.dataset import FrameLoader, write_store
from proseflow.flow import ProseFlow
from proseflow.flow.checkpoint import load_model
from proseflow.flow.train import EMA, TrainConfig, flow_config, lr_factor, train, use_compile
from proseflow.physics.structures import build_peptide

torch.set_num_threads(1)


def noisy_frames(sequences, n_frames, seed):
    """Built structure + 0.02 nm Gaussian noise: a tiny, learnable 'trajectory' on a real topology."""
    for i, seq in enumerate(sequences):
        _, pos = build_peptide(seq, minimize=False)
        rng = np.random.default_rng([seed, i])
        yield seq, (pos[None] + rng.normal(0, 0.02, (n_frames, *pos.shape))).astype(np.float32)


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    root = tmp_path_factory.mktemp("stores")
    train_store = write_store(root / "train.zarr", noisy_frames(["AG", "VS"], 48, 0), subsample_every=1)
    val_store = write_store(root / "val.zarr", noisy_frames(["GA"], 16, 1), subsample_every=1)
    return [str(train_store)], [str(val_store)]


def tiny(**overrides) -> TrainConfig:
    kw = dict(model_preset="tiny", batch_size=8, max_steps=16, lr=3e-3, log_every=1, checkpoint_every=6,
              val_every=8, val_frames=16, val_batch_size=16, progress=False, num_threads=1)  # fmt: skip
    return TrainConfig(**{**kw, **overrides})


def read_log(out):
    with open(out / "train_log.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def losses(rows):
    return np.array([[int(r["step"]), float(r["loss"]), float(r["lr"]), float(r["grad_norm"])] for r in rows])


def final_state(out):
    ckpt = torch.load(out / "checkpoint.pt", weights_only=False)
    return ckpt["model"], ckpt["ema"]


def assert_states_close(a, b, atol):
    assert a.keys() == b.keys()
    diff = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert diff <= atol, diff


def test_paper_recipe_defaults_and_schedule():
    cfg = TrainConfig()
    assert (cfg.lr, cfg.betas, cfg.weight_decay, cfg.grad_clip, cfg.ema_decay) == (1e-4, (0.9, 0.95), 4e-4, 1.0, 0.999)
    assert (cfg.batch_size, cfg.max_steps, cfg.scale_nm, cfg.tf32) == (512, 500_000, 0.35, False)
    assert lr_factor(0, cfg) == pytest.approx(1 / 500)
    assert lr_factor(25_000, cfg) == pytest.approx(1.0)  # end of the 5% warm-up
    assert lr_factor(12_500, cfg) == pytest.approx((1 + 1 / 500) / 2)
    assert lr_factor(500_000, cfg) == pytest.approx(1 / 500)  # the paper's floor: OneCycleLR final_div_factor 1


def test_permutation_order_is_the_loaders_rows():
    """The model file records each block's row of the loader's permutations (one vocabulary, no translation)."""
    def names(**model):
        return [features.PERMUTATION_NAMES[i] for i in flow_config(TrainConfig(model=model)).perm_order]

    assert names() == ["bb_std", "rbr_std_flip", "bb_std_flip", "rbr_std", "bb_var", "rbr_var_flip", "bb_var_flip",
                       "rbr_var"]  # fmt: skip  (the paper's interleaved cycle)
    assert names(backbone_first=False) == ["rbr_std", "rbr_std_flip", "rbr_var", "rbr_var_flip"]
    assert names(arch="tarflow") == ["rbr_std", "rbr_std_flip"]
    assert flow_config(TrainConfig(model={"perm_order": (3, 2)})).perm_order == (3, 2)  # explicit: loader rows


def test_ema_update_formula():
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    ema = EMA(model, decay=0.9)
    e0 = [p.detach().clone() for p in model.parameters()]
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    ema.update(model)
    for e, p0, p in zip(ema.model.parameters(), e0, model.parameters(), strict=True):
        torch.testing.assert_close(e, 0.9 * p0 + 0.1 * p, rtol=0, atol=1e-7)
        assert not e.requires_grad
    expected = [0.9 * e.detach().clone() + 0.1 * 2 * p for e, p in zip(ema.model.parameters(), model.parameters(), strict=True)]
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(2.0)
    ema.update(model)
    for e, x in zip(ema.model.parameters(), expected, strict=True):
        torch.testing.assert_close(e, x, rtol=0, atol=1e-6)


def test_ema_decay_warms_up_then_stays():
    ema = EMA(torch.nn.Linear(2, 2), decay=0.999)
    assert ema.decay_at(0) == pytest.approx(0.1) and ema.decay_at(90) == pytest.approx(0.91)
    assert ema.decay_at(10_000) == 0.999 and ema.decay_at(None) == 0.999
    # after 2,000 warmed-up steps the initial weights carry (almost) no weight in the average
    w_init = np.prod([ema.decay_at(s) for s in range(2000)])
    assert w_init < 1e-3 < 0.999**2000


def test_training_reduces_loss_and_writes_outputs(stores, tmp_path):
    out = tmp_path / "run"
    result = train(tiny(max_steps=40, batch_size=16, checkpoint_every=20, val_every=20, snapshot_every=15), *stores,
                   out)
    assert result["completed"] and result["step"] == 40
    rows = read_log(out)
    loss = losses(rows)[:, 1]
    assert len(rows) == 40
    assert loss[-5:].mean() < loss[:5].mean() - 0.2, loss
    assert [r["step"] for r in rows if r["val_nll"]] == ["20", "40"]
    assert np.isfinite(float(rows[-1]["val_nll"]))
    for name in ("checkpoint.pt", "model.pt", "settings.json", "loss_curve.png"):
        assert (out / name).stat().st_size > 0
    settings = json.loads((out / "settings.json").read_text())
    assert settings["train_config"]["lr"] == 3e-3 and settings["steps"] == 40
    assert settings["block_permutations"] == ["bb_std", "rbr_std_flip", "bb_std_flip", "rbr_std", "bb_var",
                                              "rbr_var_flip", "bb_var_flip", "rbr_var"]
    assert {"torch", "python"} <= settings["versions"].keys() and "cpu_count" in settings["hardware"]

    model = load_model(out / "model.pt")
    assert_states_close(model.state_dict(), final_state(out)[1], atol=0)  # model.pt holds the EMA weights
    assert sorted(p.name for p in (out / "snapshots").iterdir()) == ["step_0000015.pt", "step_0000030.pt"]
    snap = load_model(out / "snapshots" / "step_0000030.pt")
    assert snap.meta["step"] == 30 and any(
        not torch.equal(a, b) for a, b in zip(snap.state_dict().values(), model.state_dict().values(), strict=True))
    loader = FrameLoader(stores[1], 2, seed=0, split="all")
    x, log_q, _ = model.sample(loader.batch(0), n=2, generator=torch.Generator().manual_seed(0))
    assert x.shape[0] == 4 and torch.isfinite(x).all() and torch.isfinite(log_q).all()


KILLED_CHILD = textwrap.dedent(
    """
    import json, os, signal, sys
    import torch
    torch.set_num_threads(1)
    import proseflow.flow.train as T

    kill_at, cfg, train_store, val_store, out = int(sys.argv[1]), json.loads(sys.argv[2]), *sys.argv[3:]
    append = T._CSVLog.append

    def append_then_die(self, row):  # SIGKILL mid-interval: 2 steps after the last checkpoint
        append(self, row)
        if row["step"] == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)

    T._CSVLog.append = append_then_die
    T.train(T.TrainConfig(**cfg), [train_store], [val_store], out)
    """
)


def test_sigkilled_run_resumes_exactly(stores, tmp_path):
    cfg = tiny()  # 16 steps, checkpoints at 6 and 12, validation at 8 and 16
    train(cfg, *stores, tmp_path / "straight")

    out = tmp_path / "resumed"
    args = [sys.executable, "-c", KILLED_CHILD, "14", json.dumps(cfg.to_dict()), *stores[0], *stores[1], str(out)]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert proc.returncode == -9, proc.stderr[-2000:]
    assert torch.load(out / "checkpoint.pt", weights_only=False)["step"] == 12
    assert len(read_log(out)) == 14 and not (out / "model.pt").exists()

    train(cfg, *stores, out)  # same arguments: continues from step 12
    straight, resumed = read_log(tmp_path / "straight"), read_log(out)
    np.testing.assert_allclose(losses(resumed), losses(straight), rtol=1e-6, atol=0)
    assert [r["val_nll"] for r in resumed] == [r["val_nll"] for r in straight]
    for a, b in zip(final_state(out), final_state(tmp_path / "straight"), strict=True):
        assert_states_close(a, b, atol=1e-6)


def test_time_limit_stops_cleanly_and_settings_must_match(stores, tmp_path):
    result = train(tiny(stop_after_s=0.0), *stores, tmp_path)
    assert not result["completed"] and result["step"] == 0
    assert (tmp_path / "checkpoint.pt").exists() and not (tmp_path / "model.pt").exists()
    with pytest.raises(ValueError, match="lr"):
        train(tiny(lr=1e-3), *stores, tmp_path)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank, world_size, port, cfg, stores, out):
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world_size),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))  # fmt: skip
    torch.set_num_threads(1)
    train(TrainConfig(**cfg), *stores, out)


def test_two_rank_ddp_matches_one_process(stores, tmp_path):
    cfg = tiny(max_steps=8, checkpoint_every=8, val_every=8)
    # the ranks' shares of every global batch are its two halves
    halves = [FrameLoader(stores[0], 8, seed=0, rank=r, world_size=2).batch(3)["frame"] for r in range(2)]
    whole = FrameLoader(stores[0], 8, seed=0).batch(3)["frame"]
    assert torch.equal(torch.cat(halves), whole)

    train(cfg, *stores, tmp_path / "single")
    mp.spawn(_ddp_worker, args=(2, _free_port(), cfg.to_dict(), stores, tmp_path / "ddp"), nprocs=2, join=True)
    assert (tmp_path / "ddp" / "model.pt").exists()
    np.testing.assert_allclose(losses(read_log(tmp_path / "ddp")), losses(read_log(tmp_path / "single")),
                               rtol=1e-4, atol=1e-6)  # fmt: skip
    for a, b in zip(final_state(tmp_path / "ddp"), final_state(tmp_path / "single"), strict=True):
        assert_states_close(a, b, atol=1e-4)


def test_loaded_model_matches_trained_flow_config(stores, tmp_path):
    train(tiny(max_steps=2, model={"arch": "tarflow"}), *stores, tmp_path)
    model = load_model(tmp_path / "model.pt")
    assert isinstance(model, ProseFlow) and not model.training
    assert model.config == flow_config(tiny(model={"arch": "tarflow"}))
    assert model.meta["features"]["permutation_names"] == list(features.PERMUTATION_NAMES)
    assert model.meta["scale_nm"] == 0.35


def test_scale_from_the_data_reaches_the_model_file(stores, tmp_path):
    """train.scale_nm: data trains on coordinates divided by the training stores' centred std, and the model
    file carries that scale for every consumer; a bad value is refused naming the key."""
    from proseflow.data.dataset import coordinate_std_nm
    from proseflow.flow.checkpoint import model_scale_nm

    train(tiny(max_steps=2, scale_nm="data"), *stores, tmp_path)
    model = load_model(tmp_path / "model.pt")
    expected = coordinate_std_nm(stores[0], "train")
    assert 0.05 < expected < 0.5 and model_scale_nm(model) == pytest.approx(expected, rel=1e-12)
    assert json.loads((tmp_path / "settings.json").read_text())["scale_nm"] == pytest.approx(expected, rel=1e-12)
    for bad in ("auto", -0.1):
        with pytest.raises(ValueError, match="train.scale_nm"):
            tiny(scale_nm=bad)


def test_best_snapshot_follows_a_synthetic_curve():
    from proseflow.flow.train import BestSnapshot

    best = BestSnapshot()
    curve = [(100, 1.2), (200, 0.7), (300, float("nan")), (400, 0.9), (500, 0.65), (600, 0.66), (700, None)]
    picked = [s for s, v in curve if best.update(s, v)]
    assert picked == [100, 200, 500] and (best.step, best.val_nll) == (500, 0.65)
    resumed = BestSnapshot(**dataclasses.asdict(best))  # what the checkpoint carries
    assert not resumed.update(800, 0.7) and resumed.step == 500


def test_keep_best_selects_the_lowest_validation_snapshot_across_a_resume(stores, tmp_path, monkeypatch):
    """train.keep: best: model.pt is the EMA snapshot whose validation NLL is lowest in the whole log, also when the
    run died and resumed (the best of the first session is kept); settings.json says which step was selected."""
    from proseflow.flow import train as train_module

    cfg = tiny(max_steps=12, val_every=2, lr=6e-2, keep="best")  # a large lr: the validation curve is not monotone
    original = train_module._CSVLog.append

    def die_after_the_step_6_checkpoint(self, row):
        if int(row["step"]) == 7:
            raise RuntimeError("killed")
        original(self, row)

    monkeypatch.setattr(train_module._CSVLog, "append", die_after_the_step_6_checkpoint)
    with pytest.raises(RuntimeError, match="killed"):
        train(cfg, *stores, tmp_path)
    monkeypatch.setattr(train_module._CSVLog, "append", original)
    assert torch.load(tmp_path / "checkpoint.pt", weights_only=False)["best"]["step"] in (2, 4, 6)
    train(cfg, *stores, tmp_path)  # resumes at step 6
    rows = [r for r in read_log(tmp_path) if r["val_nll"]]
    vals = {int(r["step"]): float(r["val_nll"]) for r in rows}
    assert len(vals) == 6
    best_step = min(vals, key=vals.get)
    assert best_step != max(vals), vals  # the run overshoots: best is not last, so "best" differs from "last"
    selected = json.loads((tmp_path / "settings.json").read_text())["selected"]
    assert selected["step"] == best_step and selected["val_nll"] == pytest.approx(vals[best_step], rel=1e-5)
    model = torch.load(tmp_path / "model.pt", weights_only=False)
    snap = torch.load(tmp_path / "best.pt", weights_only=False)
    assert model["step"] == best_step == snap["step"]
    assert all(torch.equal(model["model"][k], snap["model"][k]) for k in snap["model"])


def test_length_buckets_and_compile_settings(stores, tmp_path):
    """Length-bucketed training runs and records its buckets; `compile` may change on resume, a run from
    before these settings existed resumes, and "auto" leaves short runs eager."""
    assert TrainConfig().compile is False and TrainConfig().length_buckets is None
    assert not use_compile(tiny(), 10_000) and use_compile(tiny(compile=True), 16)
    assert not use_compile(tiny(compile="auto"), 16) and use_compile(tiny(compile="auto"), 10_000)
    with pytest.raises(ValueError, match="compile"):
        tiny(compile="sometimes")
    cfg = tiny(max_steps=6, length_buckets=2)
    out = tmp_path / "buckets"
    train(cfg, *stores, out)
    settings = json.loads((out / "settings.json").read_text())
    sizes = sorted(s["n_atoms"] for s in FrameLoader(stores[0], 8, seed=0).systems)
    assert settings["length_buckets"]["max_atoms"] == sizes and sum(settings["length_buckets"]["frames"]) == 96
    assert settings["compiled"] is False
    (out / "settings.json").unlink()  # as if interrupted before the end: a rerun resumes (a finished one restarts)
    with pytest.raises(ValueError, match="length_buckets"):
        train(tiny(max_steps=6), *stores, out)  # other batches: not the same run
    ckpt = torch.load(out / "checkpoint.pt", weights_only=False)
    for key in ("compile", "length_buckets"):  # a checkpoint written before the two settings existed
        del ckpt["config"][key]
    del ckpt["loader"]["bucket_edges"]
    torch.save(ckpt, out / "checkpoint.pt")
    (out / "model.pt").unlink()
    train(tiny(max_steps=6, compile=False), *stores, out)  # resumes (at its last step): defaults match


@pytest.mark.skipif(os.environ.get("PROSEFLOW_TEST_COMPILE") != "1", reason="torch.compile takes minutes on 2 cores")
def test_compiled_training_matches_eager_and_checkpoints_interchange(stores, tmp_path):
    eager, compiled = tiny(compile=False), tiny(compile=True)
    train(eager, *stores, tmp_path / "eager")
    train(compiled, *stores, tmp_path / "compiled")
    settings = json.loads((tmp_path / "compiled" / "settings.json").read_text())
    assert settings["compiled"] and settings["compile_s_last_session"] > 0
    a, b = losses(read_log(tmp_path / "compiled")), losses(read_log(tmp_path / "eager"))
    np.testing.assert_allclose(a[0], b[0], rtol=1e-5)  # first step: same loss and gradient norm
    np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-5)  # round-off grows slowly over 16 steps
    for x, y in zip(final_state(tmp_path / "compiled"), final_state(tmp_path / "eager"), strict=True):
        assert_states_close(x, y, atol=1e-3)  # same keys (no _orig_mod. prefixes), close weights
    model = load_model(tmp_path / "compiled" / "model.pt")  # a compiled run's model loads in an eager one
    assert_states_close(model.state_dict(), final_state(tmp_path / "compiled")[1], atol=0)

    for first, then in ((eager, compiled), (compiled, compiled)):  # SIGKILL at 14, resume from the step-12 checkpoint
        out = tmp_path / f"{first.compile}-{then.compile}"
        args = [sys.executable, "-c", KILLED_CHILD, "14", json.dumps(first.to_dict()), *stores[0], *stores[1], str(out)]
        assert subprocess.run(args, capture_output=True, text=True, timeout=1200).returncode == -9
        train(then, *stores, out)
        straight = tmp_path / ("compiled" if first.compile else "eager")
        if first.compile == then.compile:  # within a mode: exact
            np.testing.assert_array_equal(losses(read_log(out)), losses(read_log(straight)))
            for x, y in zip(final_state(out), final_state(straight), strict=True):
                assert_states_close(x, y, atol=0)
        else:
            np.testing.assert_allclose(losses(read_log(out)), losses(read_log(straight)), rtol=1e-3, atol=1e-5)


def test_compile_falls_back_to_eager_when_compilation_fails(caplog):
    """A compiler error during the warm-up leaves the loss eager (and says so in the log)."""
    from proseflow.flow.train import _NLL, compile_loss

    model = ProseFlow(flow_config(tiny()))
    loss_fn = _NLL(model)

    def broken(fn):
        raise RuntimeError("InductorError: no working C++ compiler")

    with caplog.at_level("WARNING", logger="proseflow"):
        assert compile_loss(loss_fn, broken) is None
    assert "training eagerly" in caplog.text and loss_fn._compiled_call_impl is None
