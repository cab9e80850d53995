"""Checksummed artefacts: a flipped byte in a frame store or an MD file is an error that names the file,
never a silently changed training frame; a finished model rerun starts fresh."""

import json
import shutil

import h5py
import mdtraj
import numpy as np
import pytest
import torch

from proseflow.data.dataset import (
    STORE_VERSION,
    CorruptStoreError,
    FrameLoader,
    chunk_file,
    iterate_system_frames,
    open_store,
    write_store,
)
from proseflow.data.features import _sequence_topology
from proseflow.flow.train import TrainConfig, train
from proseflow.physics import trajectory_io
from proseflow.physics.structures import build_peptide

torch.set_num_threads(1)
SEQS = ("AG", "VS")
N_FRAMES = 48


def md_like(seq, n_frames, seed):
    _, pos = build_peptide(seq, minimize=False)
    rng = np.random.default_rng(seed)
    return (pos[None] + rng.normal(0, 0.02, (n_frames, *pos.shape))).astype(np.float32)


def write_md(path, seq, xyz):
    trajectory_io.create(path, _sequence_topology(seq), protocol={"test": True})
    trajectory_io.append(path, xyz, 10.0 + 0.1 * np.arange(len(xyz)), np.arange(len(xyz), dtype=float))
    return path


def flip(path, offset, n_bytes):
    """XOR ``n_bytes`` bytes of ``path`` from ``offset`` with 0xFF (a real corruption, in place)."""
    data = bytearray(path.read_bytes())
    data[offset : offset + n_bytes] = bytes(b ^ 0xFF for b in data[offset : offset + n_bytes])
    path.write_bytes(bytes(data))


def shard_chunk_range(shard, n_chunks, k):
    """(offset, nbytes) of inner chunk ``k`` from the shard's index (at its end: n_chunks x (offset, nbytes)
    as little-endian uint64, then a 4-byte crc32c)."""
    raw = shard.read_bytes()
    index = np.frombuffer(raw[-(16 * n_chunks + 4) : -4], dtype="<u8").reshape(n_chunks, 2)
    return int(index[k, 0]), int(index[k, 1])


@pytest.fixture(scope="module")
def md_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("md")
    return {seq: write_md(root / f"{seq}.h5", seq, md_like(seq, N_FRAMES, i)) for i, seq in enumerate(SEQS)}


@pytest.fixture(scope="module")
def clean_store(tmp_path_factory, md_files):
    """A store as the pipeline writes it (from MD files), one frame per chunk, one shard per system."""
    path = tmp_path_factory.mktemp("stores") / "batch00000.zarr"
    return write_store(path, [(s, md_files[s]) for s in SEQS], subsample_every=1, frames_per_chunk=1)


@pytest.fixture
def store(tmp_path, clean_store):
    copy = tmp_path / clean_store.name
    shutil.copytree(clean_store, copy)
    return copy


def test_every_array_carries_crc32c_checksums(clean_store):
    meta = json.loads((clean_store / "systems" / "AG" / "positions" / "zarr.json").read_text())
    (sharding,) = meta["codecs"]
    assert sharding["name"] == "sharding_indexed"
    assert sharding["configuration"]["codecs"][-1] == {"name": "crc32c"}
    assert sharding["configuration"]["index_codecs"][-1] == {"name": "crc32c"}
    for name in ("conditioning", "permutations"):
        meta = json.loads((clean_store / "systems" / "AG" / name / "zarr.json").read_text())
        assert meta["codecs"][-1] == {"name": "crc32c"}
    assert open_store(clean_store).attrs["proseflow_store"]["version"] == STORE_VERSION == 2


def test_flipped_bytes_in_a_chunk_are_an_error_naming_store_system_and_chunk(store):
    shard = chunk_file(store, "VS", "positions", 0)
    offset, nbytes = shard_chunk_range(shard, N_FRAMES, 30)
    flip(shard, offset + nbytes // 3, min(200, nbytes // 2))
    # frames before chunk 30 still read; the loader and the system iterator both stop at chunk 30
    frames = iterate_system_frames(store, "VS", frames_per_read=10)
    for _ in range(3):
        next(frames)
    with pytest.raises(CorruptStoreError) as err:
        next(frames)
    for part in (str(store), "system VS", "chunk 30", str(shard), "rebuild"):
        assert part in str(err.value)

    loader = FrameLoader(store, batch_size=32, seed=0)
    with pytest.raises(CorruptStoreError, match=r"system VS, positions chunk 30 \(frames 30-30\)"):
        for step in range(100):
            loader.batch(step)


def test_flipped_bytes_in_the_shard_index_are_an_error_naming_the_file(store):
    shard = chunk_file(store, "AG", "positions", 0)
    flip(shard, shard.stat().st_size - 40, 8)
    with pytest.raises(CorruptStoreError, match=f"system AG.*{shard}"):
        next(iterate_system_frames(store, "AG"))


def test_flipped_bytes_in_conditioning_are_an_error(store):
    path = chunk_file(store, "AG", "conditioning", 0)
    flip(path, 2, 4)
    with pytest.raises(CorruptStoreError, match=f"system AG, conditioning chunk 0 .*{path}"):
        FrameLoader(store, batch_size=64, seed=0).batch(0)


def test_version_1_store_is_refused_saying_to_rebuild(store):
    meta_path = store / "zarr.json"
    meta = json.loads(meta_path.read_text())
    meta["attributes"]["proseflow_store"]["version"] = 1
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=r"version 1 \(written without chunk checksums\).*rebuild"):
        FrameLoader(store, batch_size=8, seed=0)


def _first_read_step(loader, system, chunk, n_steps):
    for step in range(n_steps):
        s, f = loader.draw(step)
        if np.any((s == system) & (f == chunk)):
            return step
    return None


def test_training_stops_on_a_corrupt_chunk_keeping_its_checkpoint(store, tmp_path):
    cfg = TrainConfig(model_preset="tiny", batch_size=8, max_steps=20, checkpoint_every=6, log_every=1,
                      progress=False, num_threads=1)  # fmt: skip
    probe = FrameLoader(store, cfg.batch_size, cfg.seed)
    first = {k: _first_read_step(probe, 1, k, cfg.max_steps) for k in range(N_FRAMES)}
    chunk = next(k for k, step in first.items() if step is not None and 8 <= step < cfg.max_steps)
    shard = chunk_file(store, "VS", "positions", 0)
    offset, nbytes = shard_chunk_range(shard, N_FRAMES, chunk)
    flip(shard, offset + 1, nbytes - 2)

    out = tmp_path / "run"
    with pytest.raises(CorruptStoreError) as err:
        train(cfg, [str(store)], None, out)
    msg = str(err.value)
    assert f"training stopped at step {first[chunk]}" in msg
    assert f"system VS, positions chunk {chunk}" in msg and str(shard) in msg
    last = first[chunk] // 6 * 6  # batch first[chunk] is read after step first[chunk]'s checkpoint
    assert last >= 6 and f"{out / 'checkpoint.pt'} (step {last}) is kept" in msg
    assert torch.load(out / "checkpoint.pt", weights_only=False)["step"] == last
    assert not (out / "model.pt").exists()


def test_rerun_of_a_finished_model_starts_fresh(clean_store, tmp_path, caplog):
    cfg = TrainConfig(model_preset="tiny", batch_size=8, max_steps=4, checkpoint_every=2, log_every=1,
                      progress=False, num_threads=1)  # fmt: skip
    out = tmp_path / "run"
    train(cfg, [str(clean_store)], None, out)
    first_log = (out / "train_log.csv").read_text()
    (out / "model.pt").unlink()  # what snakemake --forcerun does before the job runs
    with caplog.at_level("WARNING", logger="proseflow"):
        result = train(cfg, [str(clean_store)], None, out)
    assert "starting a fresh run" in caplog.text and "checkpoint.previous.pt" in caplog.text
    assert result["step"] == 4 and (out / "model.pt").exists()
    assert (out / "checkpoint.previous.pt").exists() and (out / "settings.previous.json").exists()
    assert (out / "train_log.csv").read_text().count("\n") == first_log.count("\n") == 5  # 4 steps again


# ------------------------------------------------------------------------------------- MD HDF5 files
def test_md_files_carry_fletcher32_and_stay_readable_by_mdtraj(md_files):
    with h5py.File(md_files["AG"], "r") as f:
        assert all(f[name].fletcher32 for name in ("coordinates", "time", "potentialEnergy", "topology"))
    traj = mdtraj.load(str(md_files["AG"]))
    np.testing.assert_array_equal(traj.xyz, trajectory_io.read(md_files["AG"])["positions_nm"])


def test_concatenated_md_file_keeps_checksums(md_files, tmp_path):
    out = tmp_path / "both.h5"
    trajectory_io.concatenate([md_files["AG"], md_files["AG"]], out)
    with h5py.File(out, "r") as f:
        assert all(f[name].fletcher32 for name in ("coordinates", "time", "potentialEnergy", "topology"))
    assert mdtraj.load(str(out)).n_frames == 2 * N_FRAMES


def test_flipped_bytes_in_an_md_file_are_an_error_naming_it(md_files, tmp_path):
    path = tmp_path / "AG.h5"
    shutil.copy(md_files["AG"], path)
    with h5py.File(path, "r") as f:
        info = f["coordinates"].id.get_chunk_info(0)
    flip(path, info.byte_offset + 100, 300)
    with pytest.raises(trajectory_io.CorruptTrajectoryError, match=f"corrupt MD trajectory file {path}: a Fletcher-32 checksum failed"):
        trajectory_io.read(path)
    with pytest.raises(trajectory_io.CorruptTrajectoryError, match=str(path)):
        write_store(tmp_path / "s.zarr", [("AG", path)], subsample_every=1)
    assert not (tmp_path / "s.zarr").exists()


# ------------------------------------------------------------------------------------- proseflow verify
@pytest.fixture(scope="module")
def results_tree(tmp_path_factory, md_files, clean_store):
    """A small results tree of real artefacts: MD file, frame store, trained model, sample set, JSON."""
    from proseflow.artefacts import save_text

    root = tmp_path_factory.mktemp("tree") / "results"
    (root / "md" / "test").mkdir(parents=True)
    shutil.copy(md_files["AG"], root / "md" / "test" / "AG.h5")
    shutil.copytree(clean_store, root / "dataset" / "train" / "batch00000.zarr")
    cfg = TrainConfig(model_preset="tiny", batch_size=8, max_steps=2, checkpoint_every=2, progress=False,
                      num_threads=1)  # fmt: skip
    train(cfg, [str(root / "dataset" / "train" / "batch00000.zarr")], None, root / "models" / "prose")
    xyz = md_like("AG", 20, 7)
    from proseflow.samplers.sample_set import SampleSet

    SampleSet(positions_nm=xyz, energy_kT=np.arange(20.0), log_weights=np.full(20, -np.log(20)), ess=1.0,
              n_distinct=20, n_energy_evals=20, wall_time_s=1.0, temperature_K=310.0).save(
        root / "samples" / "AG" / "snis.npz")
    save_text(root / "eval" / "AG.json", json.dumps({"snis": {"ess": 0.5, "n_distinct": 20}}))
    return root


@pytest.fixture
def tree(tmp_path, results_tree):
    copy = tmp_path / "results"
    shutil.copytree(results_tree, copy)
    return copy


def run_verify(root, capsys):
    from proseflow.cli import main

    code = main(["verify", str(root), "--no-progress"])
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def test_verify_passes_a_clean_tree(tree, capsys):
    code, out = run_verify(tree, capsys)
    assert code == 0, out
    assert "verify OK" in out and "1 MD file" in out and "1 frame store" in out and "0 bad" in out
    assert "2 model" in out and "2 JSON" in out  # model.pt, checkpoint.pt; settings.json, eval JSON
    assert "BAD" not in out and "WARN" not in out


def _corrupt_md(tree):
    path = tree / "md" / "test" / "AG.h5"
    with h5py.File(path, "r") as f:
        info = f["coordinates"].id.get_chunk_info(0)
    flip(path, info.byte_offset + 50, 100)
    return path


def _corrupt_store(tree):
    store = tree / "dataset" / "train" / "batch00000.zarr"
    shard = chunk_file(store, "AG", "positions", 0)
    offset, nbytes = shard_chunk_range(shard, N_FRAMES, 5)
    flip(shard, offset + 2, 8)
    return store


def _incomplete_store(tree):
    store = tree / "dataset" / "train" / "batch00000.zarr"
    meta = json.loads((store / "zarr.json").read_text())
    meta["attributes"]["proseflow_store"]["complete"] = False
    (store / "zarr.json").write_text(json.dumps(meta))
    return store


def _corrupt_middle(path):
    flip(path, path.stat().st_size // 2, 16)
    return path


def _nan_json(tree):
    path = tree / "eval" / "AG.json"
    path.write_text('{"snis": {"ess": NaN}}')
    return path


@pytest.mark.parametrize(
    "corrupt",
    [
        _corrupt_md,
        _corrupt_store,
        _incomplete_store,
        lambda tree: _corrupt_middle(tree / "models" / "prose" / "model.pt"),
        lambda tree: _corrupt_middle(tree / "samples" / "AG" / "snis.npz"),
        _nan_json,
    ],
    ids=["md", "store", "incomplete-store", "model", "npz", "json-nan"],
)
def test_verify_fails_naming_the_corrupt_file(tree, capsys, corrupt):
    path = corrupt(tree)
    code, out = run_verify(tree, capsys)
    assert code == 1, out
    bad = [line for line in out.splitlines() if line.startswith("BAD")]
    assert len(bad) == 1 and bad[0].startswith(f"BAD  {path}:"), out
    assert "verify FAILED" in out and "1 bad" in out


def test_verify_warns_about_an_unfinished_run_and_leftovers(tree, capsys):
    (tree / "models" / "prose" / "model.pt").unlink()
    (tree / "samples" / "AG" / ".snis.npz.tmp-123.npz").write_bytes(b"partial")
    code, out = run_verify(tree, capsys)
    assert code == 0, out
    assert f"WARN {tree / 'models' / 'prose'}: unfinished training run" in out
    assert "leftover of an interrupted write" in out and "2 warnings" in out


def test_json_artefacts_are_strict(tmp_path):
    from proseflow.artefacts import save_json

    path = save_json(tmp_path / "m.json", {"ess": float("nan"), "w2": [np.float64(1.5), float("inf")],
                                           "n": np.int64(3), "ok": True})  # fmt: skip
    def reject(name):
        raise AssertionError(f"non-strict JSON constant {name}")

    assert json.loads(path.read_text(), parse_constant=reject) == {"ess": None, "w2": [1.5, None], "n": 3.0,
                                                                    "ok": True}
