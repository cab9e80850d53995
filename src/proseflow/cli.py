"""Command-line adapters: a few lines each, called by the Snakemake rules (``python -m proseflow ...``)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import time
from pathlib import Path

log = logging.getLogger("proseflow")


def _json(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f"not valid JSON: {e}") from None


def cmd_sequences(args) -> None:
    import pandas as pd

    from proseflow.config import sequence_set, train_counts
    from proseflow.sequences import check_disjoint, draw_uniform, to_frame

    config = {"sequences": args.sequences}
    val, test = sequence_set(config, "val"), sequence_set(config, "test")
    train = draw_uniform(train_counts(config), seed=args.sequences["seed"], exclude=[*val, *test])
    check_disjoint({"train": train, "val": val, "test": test})
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for name, seqs in (("train", train), ("val", val), ("test", test)):
        frame: pd.DataFrame = to_frame(seqs)
        tmp = out / f".{name}.csv.tmp"
        frame.to_csv(tmp, index=False)
        os.replace(tmp, out / f"{name}.csv")
        log.info("%s: %d sequences", name, len(seqs))


def cmd_structure(args) -> None:
    from proseflow.sequences import validate_sequence
    from proseflow.structures import build_peptide, write_pdb

    validate_sequence(args.sequence, min_length=1, max_length=args.max_length)
    topology, positions_nm = build_peptide(args.sequence)
    write_pdb(args.out, topology, positions_nm)
    log.info("%s: %d atoms -> %s", args.sequence, topology.getNumAtoms(), args.out)


def _md_protocol(args):
    from proseflow.md import MDProtocol

    return MDProtocol(**args.protocol)


def cmd_md(args) -> None:
    """Reference MD of one system (structure from its PDB)."""
    from proseflow.md import MDSystem, simulate, stable_seed
    from proseflow.structures import load_pdb

    protocol = _md_protocol(args)
    protocol = type(protocol)(**{**protocol.__dict__, "seed": stable_seed(protocol.seed, args.name)})
    topology, positions_nm = load_pdb(args.structure)
    system = MDSystem(args.name, topology, positions_nm, Path(args.out))
    work = Path(args.out).parent / ".work" / args.name
    t0 = time.time()
    simulate([system], protocol, work, threads=args.threads)
    log.info("MD of %s done in %.1f s", args.name, time.time() - t0)


def cmd_md_batch(args) -> None:
    """Training/validation MD: systems_per_job sequences of a split as copies in one context."""
    import pandas as pd

    from proseflow.md import MDSystem, simulate, stable_seed
    from proseflow.structures import build_peptide, write_pdb

    seqs = pd.read_csv(args.sequences_csv)["sequence"].tolist()
    mine = seqs[args.batch * args.systems_per_job : (args.batch + 1) * args.systems_per_job]
    out = Path(args.out_dir)
    tmp_dir = out.with_name(f".{out.name}.tmp")
    protocol = _md_protocol(args)
    protocol = type(protocol)(**{**protocol.__dict__, "seed": stable_seed(protocol.seed, out.name, *mine)})
    tmp_dir.mkdir(parents=True, exist_ok=True)
    systems = []
    for s in mine:
        topology, positions_nm = build_peptide(s)
        write_pdb(tmp_dir / f"{s}.pdb", topology, positions_nm)
        systems.append(MDSystem(s, topology, positions_nm, tmp_dir / f"{s}.h5"))
    if systems:
        simulate(systems, protocol, out.with_name(f".{out.name}.work"), threads=args.threads)
    (tmp_dir / "manifest.json").write_text(json.dumps({"sequences": mine, "protocol": protocol.__dict__},
                                                      indent=1))
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp_dir, out)
    log.info("batch %s: %d systems -> %s", args.batch, len(mine), out)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="proseflow", description=__doc__)
    p.add_argument("-v", "--verbose", action="store_true")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("sequences", help="enumerate train/val/test sequences")
    s.add_argument("--sequences", type=_json, required=True, help="the config's `sequences` section as JSON")
    s.add_argument("--out-dir", required=True)
    s.set_defaults(func=cmd_sequences)

    s = sub.add_parser("structure", help="build and minimise one peptide structure")
    s.add_argument("--sequence", required=True)
    s.add_argument("--max-length", type=int, default=None)
    s.add_argument("--out", required=True)
    s.set_defaults(func=cmd_structure)

    s = sub.add_parser("md", help="reference MD of one system")
    s.add_argument("--name", required=True)
    s.add_argument("--structure", required=True)
    s.add_argument("--protocol", type=_json, required=True)
    s.add_argument("--threads", type=int, default=None)
    s.add_argument("--out", required=True)
    s.set_defaults(func=cmd_md)

    s = sub.add_parser("md-batch", help="batched training/validation MD")
    s.add_argument("--sequences-csv", required=True)
    s.add_argument("--batch", type=int, required=True)
    s.add_argument("--systems-per-job", type=int, required=True)
    s.add_argument("--protocol", type=_json, required=True)
    s.add_argument("--threads", type=int, default=None)
    s.add_argument("--out-dir", required=True)
    s.set_defaults(func=cmd_md_batch)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    log.info("proseflow %s %s", args.command, " ".join(sys.argv[1:]))
    try:
        args.func(args)
    except (ValueError, RuntimeError) as e:
        log.error("%s: %s", type(e).__name__, e)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
