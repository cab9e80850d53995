"""Physics stages: sequence sets, structures, MD (reference, training and validation batches, a reference MD file
used as is) and the Zarr training set.

Declared as every stage is (:mod:`proseflow.stages`).
"""

from __future__ import annotations

import copy
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from proseflow.physics.protocol import MDProtocol
from proseflow.stages import settings as S
from proseflow.stages._files import Files
from proseflow.stages.settings import ConfigError, Stage, StageSettings, _temperature, md_protocol, register

log = logging.getLogger("proseflow")


# ------------------------------------------------------------------------------------------ settings
@dataclass
class SequencesSettings(StageSettings):
    """The ``sequences`` section: train/val/test sets."""

    stage: ClassVar[str] = "sequences"
    seed: int
    min_length: int
    max_length: int
    max_target_length: int
    train_counts: dict
    val: Any  # list of sequences or {generate: {length: count}}
    test: Any
    train: list | None = None  # explicit training list (replaces the draw from train_counts)
    allow_train_test_overlap: bool = False


@dataclass
class StructureSettings(StageSettings):
    stage: ClassVar[str] = "structure"
    sequence: str  # condition: the system
    max_target_length: int


@dataclass
class MDSettings(StageSettings):
    """One MD job: reference MD of one system, or a batch of training/validation systems."""

    stage: ClassVar[str] = "md"
    split: str  # condition: reference, train or val
    protocol: MDProtocol  # the MD protocol of this job (proseflow.physics.protocol)
    name: str | None = None  # condition: the system of a reference run (its per-job seed)
    systems_per_job: int | None = None  # train/val batches only
    batch: int | None = None  # condition: the batch index of a train/val job


@dataclass
class ReferenceFileSettings(StageSettings):
    """A reference MD file used as is (``md.reference_files``) instead of simulated."""

    stage: ClassVar[str] = "reference_file"
    name: str  # condition: the system
    temperature_K: float  # md.temperature_K: the file must have been simulated at it


@dataclass
class DatasetSettings(StageSettings):
    stage: ClassVar[str] = "dataset"
    frame_interval_ps: float


# ------------------------------------------------------------------------------------------ builders
def _sequences(config):
    sq = config["sequences"]
    return SequencesSettings(
        seed=sq["seed"], min_length=sq["min_length"], max_length=sq["max_length"],
        max_target_length=sq["max_target_length"], train_counts={str(k): v for k, v in sq["train_counts"].items()},
        val=copy.deepcopy(sq["val"]), test=copy.deepcopy(sq["test"]),
        **{k: copy.deepcopy(sq[k]) for k in ("train", "allow_train_test_overlap") if k in sq},  # optional keys
    )


def _structure(config, sequence):
    return StructureSettings(sequence=sequence, max_target_length=config["sequences"]["max_target_length"])


def _md(config, split, name=None, batch=None, temperature_K=None):
    if split not in ("reference", "train", "val"):
        raise ConfigError(f"MD split must be reference, train or val, got {split!r}")
    protocol = md_protocol(config, split, temperature_K)
    if split == "reference":
        return MDSettings(split=split, protocol=protocol, name=name)
    return MDSettings(split=split, protocol=protocol, systems_per_job=config["md"][split]["systems_per_job"],
                      batch=None if batch is None else int(batch))


def _reference_file(config, name):
    return ReferenceFileSettings(name=name, temperature_K=_temperature(config, None))


def _dataset(config):
    return DatasetSettings(frame_interval_ps=config["dataset"]["frame_interval_ps"])


# ------------------------------------------------------------------------------------------ runners
def run_sequences(s: S.SequencesSettings, inputs: Files, outputs: Files) -> None:
    from proseflow.physics.sequences import check_disjoint, draw_uniform, to_frame

    config = {"sequences": s.to_dict()}
    val, test = S.sequence_set(config, "val"), S.sequence_set(config, "test")
    train = S.explicit_train(config)
    if train is None:
        train = draw_uniform(S.train_counts(config), seed=s.seed, exclude=[*val, *test])
    if s.allow_train_test_overlap:
        log.warning("sequences.allow_train_test_overlap: training, validation and test sets may share sequences "
                    "(single-system study)")
    else:
        check_disjoint({"train": train, "val": val, "test": test})
    from proseflow.artefacts import save_csv

    for name, seqs in (("train", train), ("val", val), ("test", test)):
        save_csv(outputs.one(name), to_frame(seqs))
        log.info("%s: %d sequences", name, len(seqs))


def run_structure(s: S.StructureSettings, inputs: Files, outputs: Files) -> None:
    from proseflow.physics.sequences import validate_sequence
    from proseflow.physics.structures import build_peptide, write_pdb

    validate_sequence(s.sequence, min_length=1, max_length=s.max_target_length)
    topology, positions_nm = build_peptide(s.sequence)
    out = outputs.one("pdb")
    write_pdb(out, topology, positions_nm)
    log.info("%s: %d atoms -> %s", s.sequence, topology.getNumAtoms(), out)


def run_md(s: S.MDSettings, inputs: Files, outputs: Files, threads: int | None = None) -> None:
    """Reference MD of one system (split reference), or a batch of training/validation systems."""
    from dataclasses import replace

    from proseflow.physics.md import MDSystem, simulate, stable_seed

    protocol = s.protocol
    if s.split == "reference":
        from proseflow.physics.structures import load_pdb

        if not s.name:
            raise ValueError("reference MD needs the system's name (settings.name)")
        protocol = replace(protocol, seed=stable_seed(protocol.seed, s.name))
        topology, positions_nm = load_pdb(inputs.one("structure"))
        out = Path(outputs.one("h5"))
        t0 = time.time()
        simulate([MDSystem(s.name, topology, positions_nm, out)], protocol, out.parent / ".work" / s.name,
                 threads=threads)
        log.info("MD of %s done in %.1f s", s.name, time.time() - t0)
        return

    from proseflow.physics.sequences import read_sequences
    from proseflow.physics.structures import build_peptide, load_pdb, write_pdb

    if s.batch is None or s.systems_per_job is None:
        raise ValueError(f"{s.split} MD needs settings.batch and settings.systems_per_job")
    seqs = read_sequences(inputs.one("sequences"))
    mine = seqs[s.batch * s.systems_per_job: (s.batch + 1) * s.systems_per_job]
    out = Path(outputs.one("batch"))
    tmp_dir = out.with_name(f".{out.name}.tmp")
    # the split is part of the seed: a single-system study simulates the same sequence for train and val
    protocol = replace(protocol, seed=stable_seed(protocol.seed, out.parent.name, out.name, *mine))
    tmp_dir.mkdir(parents=True, exist_ok=True)
    systems = []
    for seq in mine:
        # MD starts from the PDB the batch ships, written once: a rerun after a kill starts from the same file (a
        # rebuild on another node could differ in the last digits, and the MD checkpoint is only valid for its start)
        pdb = tmp_dir / f"{seq}.pdb"
        if not pdb.exists():
            write_pdb(pdb.with_suffix(".pdb.tmp"), *build_peptide(seq))
            os.replace(pdb.with_suffix(".pdb.tmp"), pdb)
        topology, positions_nm = load_pdb(pdb)
        systems.append(MDSystem(seq, topology, positions_nm, tmp_dir / f"{seq}.h5"))
    if systems:
        simulate(systems, protocol, out.with_name(f".{out.name}.work"), threads=threads)
    (tmp_dir / "manifest.json").write_text(json.dumps({"sequences": mine, "protocol": protocol.__dict__}, indent=1))
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp_dir, out)
    log.info("batch %s: %d systems -> %s", s.batch, len(mine), out)


def run_reference_file(s: S.ReferenceFileSettings, inputs: Files, outputs: Files) -> None:
    """A reference MD file used as is (``md.reference_files``): checked against the system's structure and the
    temperature, then copied."""
    from proseflow.physics.structures import load_pdb
    from proseflow.physics.trajectory_io import adopt_reference

    topology, _ = load_pdb(inputs.one("structure"))
    out = adopt_reference(inputs.one("file"), outputs.one("h5"), s.name, [a.name for a in topology.atoms()],
                          s.temperature_K)
    log.info("reference MD of %s: %s used as is -> %s", s.name, inputs.one("file"), out)


def run_dataset(s: S.DatasetSettings, inputs: Files, outputs: Files) -> None:
    """Zarr frame store of one MD batch, subsampled to the configured frame interval."""
    from proseflow.data.dataset import subsample_every_for, write_store

    md_dir = Path(inputs.one("batch"))
    manifest = json.loads((md_dir / "manifest.json").read_text())
    every = subsample_every_for(manifest["protocol"]["save_interval_ps"], s.frame_interval_ps)
    systems = [(seq, md_dir / f"{seq}.h5") for seq in manifest["sequences"]]
    out = outputs.one("store")
    write_store(out, systems, every, input_interval_ps=manifest["protocol"]["save_interval_ps"],
                expected_interval_ps=s.frame_interval_ps)
    log.info("%d systems -> %s (every %d-th frame)", len(systems), out, every)


register(
    Stage("sequences", SequencesSettings, _sequences, run_sequences, defaults={
        "train": "optional key sequences.train; without it the training set is drawn from train_counts",
        "allow_train_test_overlap": "optional key; without it train, val and test must be disjoint"}),
    Stage("structure", StructureSettings, _structure, run_structure, conditions=("sequence",)),
    Stage("md", MDSettings, _md, run_md, conditions=("split", "name", "batch"), threaded=True),
    Stage("reference_file", ReferenceFileSettings, _reference_file, run_reference_file, conditions=("name",)),
    Stage("dataset", DatasetSettings, _dataset, run_dataset),
)
