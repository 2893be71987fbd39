"""``python -m medpipe.plan DATA [--task ...] [--budget 15min] [--device cpu|cuda] [-o pipelines/x.yaml]``.

Writes the planned pipeline (commented YAML, validated) and its fingerprint (``<yaml stem>.fingerprint.json``
next to it, or ``--fingerprint``); prints the YAML when no ``-o`` is given. Exit codes: 0 written, 2 bad input
(named in one line).
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path
from typing import List, Optional


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m medpipe.plan", description=__doc__.split("\n\n")[0])
    p.add_argument("data", help="data folder (image/label folders, class folders, MSD dataset.json), list file "
                                "(CSV/JSON) or a pipeline YAML whose data section is kept")
    p.add_argument("--task", choices=["segmentation", "classification"], default=None)
    p.add_argument("--budget", default="15min", help="wall-clock budget of the planned run (15min, 900s, 1h)")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="the device the run will train on")
    p.add_argument("-o", "--output", default=None, help="the YAML to write (default: print it)")
    p.add_argument("--fingerprint", default=None, help="fingerprint JSON (default: <output stem>.fingerprint.json)")
    p.add_argument("--name", default=None, help="pipeline name (default: the data folder's name)")
    p.add_argument("--modality", action="append", default=None, help="CT, MRI, ... when the data does not say")
    p.add_argument("--max-cases", type=int, default=200, help="images read for the fingerprint")
    for col in ("image", "label", "split", "group"):
        p.add_argument(f"--{col}-column", default=None, help=f"list file: the {col} column (default: detected)")
    return p


def main(argv: Optional[List[str]] = None) -> int:
    """Plan, write the YAML and the fingerprint; returns the exit code (0 written, 2 bad input, named in one
    line on stderr)."""
    args = _parser().parse_args(argv)
    from medpipe.config import ConfigError
    from medpipe.data.cases import DataError
    from medpipe.logs import configure_cli_logging
    from medpipe.plan import BudgetError, LayoutError, parse_budget, plan, write_fingerprint

    configure_cli_logging()
    columns = {c: getattr(args, f"{c}_column") for c in ("image", "label", "split", "group")}
    command = "python -m medpipe.plan " + shlex.join(sys.argv[1:] if argv is None else argv)
    fp_path = Path(args.fingerprint) if args.fingerprint else (
        Path(args.output).with_suffix(".fingerprint.json") if args.output else None)
    try:
        result = plan(args.data, args.task, parse_budget(args.budget), args.device, args.name, columns,
                      args.max_cases, args.modality, command=command, fingerprint_path=fp_path)
    except (LayoutError, BudgetError, DataError, ConfigError, FileNotFoundError, ValueError, RuntimeError) as exc:
        print(f"medpipe.plan: {exc}", file=sys.stderr)
        return 2
    if args.output is None:
        sys.stdout.write(result.yaml)
    else:
        out = Path(args.output)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(result.yaml)
        print(f"written: {out} ({result.config.train.max_epochs} epochs, about "
              f"{result.why['train.max_epochs'].rsplit('about ', 1)[-1]})")
    if fp_path is not None:
        write_fingerprint(result.fingerprint, fp_path)
        print(f"fingerprint: {fp_path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
