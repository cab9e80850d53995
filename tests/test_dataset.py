"""Zarr v3 frame stores: exact round trip, checks on write, safe writing, the streaming loader."""

import json
import shutil

import mdtraj
import numpy as np
import pytest
import torch
from openmm_reference import energies_forces

import proseflow.data.dataset as dataset
from proseflow.data.dataset import (
    FrameLoader,
    coordinate_std_nm,
    iterate_system_frames,
    open_store,
    store_index,
    subsample_every_for,
    write_store,
)
from proseflow.data.features import (
    _sequence_topology,
    canonical_hydrogen_labels,
    equivalent_hydrogen_groups,
    system_features,
)
from proseflow.physics import trajectory_io

SEQS = ("AG", "PWH", "GAVL")


def random_walk(n_frames, n_atoms, seed):
    steps = np.random.default_rng(seed).normal(0, 0.01, (n_frames, n_atoms, 3))
    return (
        np.cumsum(steps, axis=0) + np.random.default_rng(seed + 1).normal(0, 0.5, (1, n_atoms, 3))
    ).astype(np.float32)


def n_atoms(seq):
    return len(system_features(seq)["atom_type"])


@pytest.fixture(scope="module")
def frames():
    """Random walks, labelled canonically (the store writer relabels equivalent hydrogens; see
    test_equivalent_hydrogens_get_one_labelling), so that the round trip is exact."""
    return {seq: canonical_hydrogen_labels(random_walk(95 + 10 * i, n_atoms(seq), i), equivalent_hydrogen_groups(seq))
            for i, seq in enumerate(SEQS)}


@pytest.fixture(scope="module")
def h5_file(tmp_path_factory, frames):
    """PWH as the MD stage writes it (trajectory_io, MDTraj HDF5), frames 1 ps apart after a 50 ps burn-in."""
    path = tmp_path_factory.mktemp("md") / "PWH.h5"
    xyz = frames["PWH"]
    trajectory_io.create(path, _sequence_topology("PWH"), protocol={"test": True})
    trajectory_io.append(path, xyz, 50.0 + np.arange(len(xyz)), np.zeros(len(xyz)))
    assert mdtraj.load(str(path)).n_frames == len(xyz)
    return path


@pytest.fixture(scope="module")
def store(tmp_path_factory, frames, h5_file):
    path = tmp_path_factory.mktemp("stores") / "batch00000.zarr"
    systems = [("AG", frames["AG"]), ("PWH", h5_file), ("GAVL", frames["GAVL"])]
    return write_store(
        path,
        systems,
        subsample_every=3,
        frames_per_chunk=4,
        frames_per_shard=8,
        val_fraction=0.25,
        expected_interval_ps=3.0,
    )


def test_round_trip_is_exact_and_subsampled(store, frames):
    root = open_store(store)
    offset = 0
    for row, seq in zip(store_index(store), SEQS, strict=True):
        expected = frames[seq][::3]
        assert row == {
            "sequence": seq,
            "n_frames": len(expected),
            "n_atoms": n_atoms(seq),
            "frame_offset": offset,
            "n_train_frames": len(expected) - round(0.25 * len(expected)),
        }
        offset += len(expected)
        positions = root[f"systems/{seq}/positions"]
        assert positions.dtype == np.float32 and positions.chunks == (4, n_atoms(seq), 3)
        np.testing.assert_array_equal(positions[:], expected)
        np.testing.assert_array_equal(np.concatenate(list(iterate_system_frames(store, seq))), expected)
        feats = system_features(seq)
        np.testing.assert_array_equal(root[f"systems/{seq}/permutations"][:], feats["permutations"])
        np.testing.assert_array_equal(root[f"systems/{seq}/conditioning"][:, 0], feats["atom_type"])
        assert root[f"systems/{seq}"].attrs["frame_interval_ps"] == 3.0
    assert root["systems/PWH"].attrs["time_start_ps"] == 50.0
    val = np.concatenate(list(iterate_system_frames(store, "AG", split="val")))
    np.testing.assert_array_equal(val, frames["AG"][::3][store_index(store)[0]["n_train_frames"] :])


@pytest.mark.parametrize("problem", ["nan", "atoms"])
def test_bad_frames_are_rejected_naming_the_system(tmp_path, frames, problem):
    bad = frames["GAVL"].copy()
    if problem == "nan":
        bad[30, 5, 1] = np.nan  # frame 30 is kept by subsample_every=3
    else:
        bad = bad[:, :-1]
    out = tmp_path / "bad.zarr"
    with pytest.raises(ValueError, match="system GAVL"):
        write_store(out, [("AG", frames["AG"]), ("GAVL", bad)], subsample_every=3)
    assert list(tmp_path.iterdir()) == []  # neither the store nor its temporary


def test_interrupted_write_leaves_no_store_and_keeps_an_old_one(tmp_path, frames, monkeypatch):
    out = tmp_path / "s.zarr"
    real = dataset._write_system
    calls = []

    def crash_on_second(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt  # e.g. the job was killed mid-write
        return real(*args, **kwargs)

    monkeypatch.setattr(dataset, "_write_system", crash_on_second)
    with pytest.raises(KeyboardInterrupt):
        write_store(out, [("AG", frames["AG"]), ("GAVL", frames["GAVL"])], subsample_every=5)
    assert list(tmp_path.iterdir()) == []

    monkeypatch.setattr(dataset, "_write_system", real)
    write_store(out, [("AG", frames["AG"])], subsample_every=5)
    monkeypatch.setattr(dataset, "_write_system", crash_on_second)
    calls.clear()
    with pytest.raises(KeyboardInterrupt):
        write_store(out, [("AG", frames["AG"]), ("GAVL", frames["GAVL"])], subsample_every=5)
    assert [r["sequence"] for r in store_index(out)] == ["AG"]  # the old complete store is untouched
    assert [p.name for p in tmp_path.iterdir()] == ["s.zarr"]

    monkeypatch.setattr(dataset, "_write_system", real)
    write_store(out, [("GAVL", frames["GAVL"])], subsample_every=5)  # replacing a complete store
    assert [r["sequence"] for r in store_index(out)] == ["GAVL"]
    assert [p.name for p in tmp_path.iterdir()] == ["s.zarr"]


def test_subsample_interval_from_config():
    assert subsample_every_for(save_interval_ps=1.0, frame_interval_ps=10.0) == 10
    assert subsample_every_for(save_interval_ps=0.1, frame_interval_ps=1.0) == 10
    with pytest.raises(ValueError, match="multiple"):
        subsample_every_for(save_interval_ps=3.0, frame_interval_ps=10.0)


def test_wrong_interval_is_rejected(tmp_path, h5_file):
    with pytest.raises(ValueError, match="system PWH.*expected 10 ps"):
        write_store(tmp_path / "s.zarr", [("PWH", h5_file)], subsample_every=3, expected_interval_ps=10.0)


def test_loader_batches_mix_lengths_with_correct_padding(store, frames):
    loader = FrameLoader([store], batch_size=16, seed=0, n_max=64)
    lengths = set()
    for _ in range(3):
        batch = next(loader)
        assert batch["x"].shape == (16, 64, 3) and batch["x"].dtype == torch.float32
        assert batch["permutations"].shape == (16, 8, 64) and batch["permutations"].dtype == torch.int64
        for i in range(16):
            meta = loader.systems[int(batch["system"][i])]
            seq, n, frame = meta["sequence"], meta["n_atoms"], int(batch["frame"][i])
            lengths.add(n)
            feats = system_features(seq)
            assert frame < store_index(store)[SEQS.index(seq)]["n_train_frames"]  # training split only
            np.testing.assert_array_equal(batch["x"][i, :n].numpy(), frames[seq][::3][frame])
            assert batch["mask"][i].tolist() == [True] * n + [False] * (64 - n)
            assert not batch["x"][i, n:].any() and not batch["atom_type"][i, n:].any()
            assert not batch["residue_index"][i, n:].any() and not batch["residue_type"][i, n:].any()
            np.testing.assert_array_equal(batch["atom_type"][i, :n].numpy(), feats["atom_type"])
            np.testing.assert_array_equal(batch["residue_index"][i, :n].numpy(), feats["residue_index"])
            assert batch["chain_length"][i] == len(seq)
            np.testing.assert_array_equal(batch["permutations"][i, :, :n].numpy(), feats["permutations"])
            np.testing.assert_array_equal(
                batch["permutations"][i, :, n:].numpy(), np.tile(np.arange(n, 64), (8, 1))
            )
    assert lengths == {n_atoms(s) for s in SEQS}
    assert len(loader._chunks) <= loader._chunks.max_items


def test_loader_is_deterministic_resumable_and_shards_across_ranks(store):
    def same(a, b):
        return all(torch.equal(a[k], b[k]) for k in a)

    first = FrameLoader([store], batch_size=8, seed=7)
    second = FrameLoader([store], batch_size=8, seed=7)
    other = FrameLoader([store], batch_size=8, seed=8)
    a = [next(first) for _ in range(4)]
    assert all(same(x, next(second)) for x in a)
    assert not same(a[0], next(other))

    resumed = FrameLoader([store], batch_size=8, seed=7)
    state = FrameLoader([store], batch_size=8, seed=7)
    for _ in range(3):
        next(state)
    resumed.load_state_dict(state.state_dict())
    assert same(next(resumed), a[3])
    with pytest.raises(ValueError, match="seed"):
        other.load_state_dict(state.state_dict())

    prefetched = FrameLoader([store], batch_size=8, seed=7)
    next(prefetched)
    stream = prefetched.prefetch(num_workers=2)  # worker processes, same batches in the same order
    assert all(same(next(stream), x) for x in a[1:])
    assert prefetched.state_dict()["step"] == 4

    ranks = [FrameLoader([store], batch_size=8, seed=7, rank=r, world_size=2) for r in range(2)]
    parts = [rk.batch(0) for rk in ranks]
    assert all(len(p["x"]) == 4 for p in parts)
    for key in a[0]:  # the two ranks' parts are disjoint halves of the same global batch
        assert torch.equal(torch.cat([parts[0][key], parts[1][key]]), a[0][key])


def test_loader_reads_the_validation_split_and_several_stores(tmp_path, store, frames):
    val = FrameLoader([store], batch_size=32, seed=0, split="val")
    batch = next(val)
    rows = {r["sequence"]: r for r in store_index(store)}
    for s, f in zip(batch["system"].tolist(), batch["frame"].tolist(), strict=True):
        assert f >= rows[val.systems[s]["sequence"]]["n_train_frames"]
    extra = write_store(tmp_path / "b1.zarr", [("PWH", frames["PWH"][:40])], subsample_every=1)
    both = FrameLoader([store, extra], batch_size=64, seed=0, split="all")
    stores = {both.systems[s]["store"] for s in next(both)["system"].tolist()}
    assert stores == {0, 1}


def test_coordinate_std_is_the_std_of_centred_training_coordinates(tmp_path, store, frames):
    """The scale written at build time equals an independent numpy computation over exactly the split's
    frames, pooled over systems; a store without the sums (older build) gives the same by reading frames."""
    import zarr

    rows = store_index(store)

    def expected(split):
        chunks = []
        for r in rows:
            kept = np.asarray(zarr.open_group(str(store), mode="r")[f"systems/{r['sequence']}/positions"][:], np.float64)
            lo, hi = {"train": (0, r["n_train_frames"]), "val": (r["n_train_frames"], r["n_frames"]),
                      "all": (0, r["n_frames"])}[split]  # fmt: skip
            x = kept[lo:hi]
            chunks.append((x - x.mean(axis=1, keepdims=True)).ravel())
        return float(np.sqrt(np.mean(np.concatenate(chunks) ** 2)))

    for split in ("train", "val", "all"):
        assert coordinate_std_nm([store], split) == pytest.approx(expected(split), rel=1e-9)
    assert expected("train") != pytest.approx(expected("val"), rel=1e-6)  # the splits are really told apart
    # an older store: no sums in the group attributes -> read the frames
    old = tmp_path / "old.zarr"
    shutil.copytree(store, old)
    for r in rows:
        meta_path = old / "systems" / r["sequence"] / "zarr.json"
        meta = json.loads(meta_path.read_text())
        del meta["attributes"]["centred_sq_sum_nm2"]
        meta_path.write_text(json.dumps(meta))
    assert coordinate_std_nm([old], "train") == pytest.approx(expected("train"), rel=1e-9)


def test_equivalent_hydrogens_get_one_labelling(tmp_path, peptide):
    """Two labellings of one molecule (hydrogens of a methyl / methylene / NH3+ swapped, as two builds can
    differ) are written as the same frames; the energy is unchanged (equal force-field parameters)."""


    top, pos = peptide("AK")
    groups = equivalent_hydrogen_groups(top)
    names = [a.name for a in top.atoms()]
    assert [(names[c], [names[h] for h in hs]) for c, _, hs in groups] == [
        ("N", ["H", "H2", "H3"]), ("CB", ["HB1", "HB2", "HB3"]), ("CB", ["HB2", "HB3"]), ("CG", ["HG2", "HG3"]),
        ("CD", ["HD2", "HD3"]), ("CE", ["HE2", "HE3"]), ("NZ", ["HZ1", "HZ2", "HZ3"])]
    rng = np.random.default_rng(0)
    x = (pos[None] + rng.normal(0, 0.005, (6, *pos.shape))).astype(np.float32)
    relabelled = x.copy()
    for _, _, hs in groups[::2]:  # swap two hydrogens of every other group: the other handedness
        relabelled[:, [hs[0], hs[1]]] = relabelled[:, [hs[1], hs[0]]]
    a, b = canonical_hydrogen_labels(x, groups), canonical_hydrogen_labels(relabelled, groups)
    np.testing.assert_array_equal(a, b)
    for c, ref, hs in groups:
        det = np.linalg.det(np.stack([a[:, hs[0]] - a[:, c], a[:, hs[1]] - a[:, c], a[:, ref] - a[:, c]], axis=1))
        assert (det > 0).all()
    e_b, e_relabelled = energies_forces(top, np.stack([b[0], relabelled[0]]))[0]
    assert e_b == pytest.approx(e_relabelled, rel=1e-9, abs=1e-6)
    s1 = write_store(tmp_path / "a.zarr", [("AK", x)], 1, topologies={"AK": top})
    s2 = write_store(tmp_path / "b.zarr", [("AK", relabelled)], 1, topologies={"AK": top})
    np.testing.assert_array_equal(open_store(s1)["systems/AK/positions"][:], open_store(s2)["systems/AK/positions"][:])
    assert open_store(s1)["systems/AK"].attrs["canonical_hydrogen_labels"] is True


@pytest.fixture(scope="module")
def lopsided(tmp_path_factory, frames):
    """Three systems of different sizes with very different numbers of frames (128 / 32 / 16)."""
    systems = [("AG", np.concatenate([frames["AG"], frames["AG"][:33]])), ("PWH", frames["PWH"][:32]),
               ("GAVL", frames["GAVL"][:16])]  # fmt: skip
    return write_store(tmp_path_factory.mktemp("lopsided") / "b.zarr", systems, subsample_every=1)


def test_length_bucket_edges():
    atoms, frames = [20, 20, 35, 50, 61, 61], [10, 10, 10, 10, 40, 20]
    assert dataset.length_bucket_edges(atoms, frames, None) == [61]
    assert dataset.length_bucket_edges(atoms, frames, 1) == [61]
    # 2 buckets of ~50 frames: up to 50 atoms (40 frames) and 61 (60 frames); a system is never split
    assert dataset.length_bucket_edges(atoms, frames, 2) == [50, 61]
    assert dataset.length_bucket_edges(atoms, frames, 100) == [20, 35, 50, 61]  # at most one per atom count
    assert dataset.length_bucket_edges(atoms, frames, [10, 30, 40, 45, 200]) == [30, 40, 61]  # empty ones dropped


def test_length_buckets_keep_every_frames_chance(lopsided):
    """Bucketed batches: one bucket per batch, and every frame as likely to be drawn as without buckets."""
    from scipy.stats import binomtest, chisquare

    loader = FrameLoader([lopsided], batch_size=8, seed=3, length_buckets=[20, 55])
    sizes = [s["n_atoms"] for s in loader.systems]  # AG 20, PWH 58, GAVL 55 atoms
    assert loader.bucket_edges == [20, 55, 58] and loader.bucket_frames == [128, 16, 32]
    counts = np.zeros(loader.n_frames_total)
    per_bucket = np.zeros(3)
    n_steps = 3000
    for step in range(n_steps):
        system, frame = loader.draw(step)
        assert len(set(system.tolist())) == 1  # here each bucket holds one system
        per_bucket[loader.bucket_edges.index(sizes[system[0]])] += 1
        np.add.at(counts, loader._offsets[system] + frame, 1)
    share = np.array(loader.bucket_frames) / loader.n_frames_total
    for b in range(3):  # buckets picked in proportion to their frames (uniform buckets would give 1/3 each)
        assert binomtest(int(per_bucket[b]), n_steps, share[b]).pvalue > 1e-3, (per_bucket, share)
    # every frame has the same chance (here 1 / 176 per batch position)
    assert chisquare(counts).pvalue > 1e-3
    assert counts.min() > 0


def test_length_buckets_are_deterministic_resumable_and_shard_across_ranks(store):
    loader = FrameLoader([store], batch_size=8, seed=5, length_buckets=[30, 56])
    again = FrameLoader([store], batch_size=8, seed=5, length_buckets=[30, 56])
    assert loader.bucket_edges == [30, 56, 58]
    seen = set()
    for step in range(12):
        a, b = loader.batch(step), again.batch(step)
        assert all(torch.equal(a[k], b[k]) for k in a)
        n_real = a["mask"].sum(dim=1)
        bucket = np.searchsorted(loader.bucket_edges, n_real.numpy(), side="left")
        assert len(set(bucket.tolist())) == 1  # every system of a batch is from the same bucket
        seen.add(int(bucket[0]))
        halves = [FrameLoader([store], 8, seed=5, rank=r, world_size=2, length_buckets=[30, 56]).batch(step)
                  for r in range(2)]  # fmt: skip
        assert all(torch.equal(torch.cat([halves[0][k], halves[1][k]]), a[k]) for k in a)
    assert seen == {0, 1, 2}
    state = FrameLoader([store], batch_size=8, seed=5, length_buckets=[30, 56])
    state.step = 7
    loader.load_state_dict(state.state_dict())
    assert loader.step == 7
    with pytest.raises(ValueError, match="bucket_edges"):
        FrameLoader([store], batch_size=8, seed=5).load_state_dict(state.state_dict())
    plain = FrameLoader([store], batch_size=8, seed=5)
    old_state = {k: v for k, v in plain.state_dict().items() if k != "bucket_edges"}  # written before buckets
    plain.load_state_dict(old_state)
