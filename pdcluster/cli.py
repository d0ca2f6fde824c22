"""``pd-cluster``: one cluster file -> every host's agent file and command, and Kubernetes.

    pd-cluster plan cluster.toml --out plan/   validate, print the summary, write the files
    pd-cluster check cluster.toml              validate and print the summary only

A separate command rather than an agent subcommand: it reads the whole cluster (every host,
both pools, masters, config servers), where the agent knows one host. Exit status 2 when
the file is invalid, with one line per problem naming its key and value.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pdcluster.layout import plan
from pdcluster.render import summary, write_plan
from pdcluster.spec import PlanError, load_spec


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="pd-cluster", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = p.add_subparsers(dest="command", required=True)
    make = sub.add_parser("plan", help="validate and write the plan")
    make.add_argument("cluster_file", type=Path)
    make.add_argument("--out", type=Path, required=True, help="output directory")
    check = sub.add_parser("check", help="validate and print the summary")
    check.add_argument("cluster_file", type=Path)
    return p


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        result = plan(load_spec(args.cluster_file))
    except PlanError as exc:
        print(f"pd-cluster: {args.cluster_file}: {exc}", file=sys.stderr)
        sys.exit(2)
    print(summary(result), end="")
    if args.command == "plan":
        written = write_plan(result, args.out, args.cluster_file.name)
        print(f"\nwrote {len(written)} files under {args.out}/")
