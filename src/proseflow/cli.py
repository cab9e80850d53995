"""The ``proseflow`` command (``python -m proseflow``).

    proseflow run <stage> --settings JSON --input NAME PATH [PATH ...] ... --output NAME PATH ...
    proseflow verify [results/]
    proseflow plan [--configfile PRESET ...] [--throughputs FILE] [--measure OUT]
    proseflow import-weights FILE --out results/models/<name>/model.pt [--head-dim 64]

``run`` runs one pipeline stage (:mod:`proseflow.stages.run`) with its settings (:mod:`proseflow.stages.settings`); this is
what every Snakemake rule calls. Building the parser imports only the standard library: each command
imports what it needs when it runs. A user-facing command that is not a stage is one more subparser here.
"""

from __future__ import annotations

import argparse
import logging
import sys

log = logging.getLogger("proseflow")


def _named_files(pairs: list[list[str]] | None, flag: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for name, *paths in pairs or []:
        if not paths:
            raise ValueError(f"{flag} {name}: no path given")
        if name in out:
            raise ValueError(f"{flag} {name} given twice")
        out[name] = paths
    return out


def cmd_run(args) -> None:
    from proseflow.stages.run import run

    run(args.stage, args.settings, _named_files(args.input, "--input"), _named_files(args.output, "--output"),
        threads=args.threads)


def cmd_import_weights(args) -> None:
    from proseflow.flow.released import import_weights

    out = import_weights(args.file, args.out, head_dim=args.head_dim, max_atoms=args.max_atoms)
    log.info("imported %s -> %s (arch prose_released, provenance in %s)", args.file, out,
             out.with_name("provenance.json"))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="proseflow", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-v", "--verbose", action="store_true")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("run", help="run one pipeline stage with its settings (what the Snakemake rules call)")
    s.add_argument("stage", help="stage name (proseflow.stages.run.STAGES)")
    s.add_argument("--settings", required=True, help="the stage's settings as JSON (proseflow.stages.settings)")
    s.add_argument("--input", nargs="+", action="append", metavar=("NAME", "PATH"),
                   help="a named input: NAME PATH [PATH ...] (repeat for each name)")
    s.add_argument("--output", nargs="+", action="append", metavar=("NAME", "PATH"),
                   help="a named output: NAME PATH [PATH ...]")
    s.add_argument("--threads", type=int, default=None)
    s.set_defaults(func=cmd_run)

    s = sub.add_parser("import-weights", help="the authors' released Prose checkpoint -> a proseflow model file")
    s.add_argument("file", help="their .pth state dict (or a Lightning .ckpt with EMA weights under state_dict)")
    s.add_argument("--out", required=True, help="the model file to write, e.g. results/models/prose_released/model.pt")
    s.add_argument("--head-dim", type=int, default=64, help="attention head width (not in the weights; released: 64)")
    s.add_argument("--max-atoms", type=int, default=256, help="length of the position tables (released: up to 178)")
    s.set_defaults(func=cmd_import_weights)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["plan"]:  # the bill of a config before it runs (proseflow.plan); never starts a job
        from proseflow.plan import main as plan_main

        return plan_main(argv[1:])
    if argv[:1] == ["verify"]:  # a user-facing command with its own parser and exit status: proseflow.verify
        from proseflow.verify import main as verify_main

        return verify_main(argv[1:])
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    log.info("proseflow %s", " ".join(sys.argv[1:] if argv is None else argv))
    try:
        args.func(args)
    except (ValueError, RuntimeError) as e:
        log.error("%s: %s", type(e).__name__, e)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
