"""The command line: `python -m tests.cluster.harness up | down | restart | status | preflight`."""

from __future__ import annotations

import argparse
import sys

from . import __doc__ as DESCRIPTION
from .common import KUBECONFIG, LEVELS, HarnessError, say
from .lifecycle import EXTERNAL_HELP, down, leave_to_external, locked, restart, status, up
from .preflight import check_preflight, preflight


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="harness",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p_up = sub.add_parser("up", help="start the cluster (idempotent)")
    p_up.add_argument("--level", choices=sorted(LEVELS), default="node")
    p_up.add_argument("--unless-external", action="store_true", help=EXTERNAL_HELP)
    sub.add_parser("down", help="stop everything and clean up (idempotent)")
    p_restart = sub.add_parser(
        "restart", help="stop running components and start them again with the same arguments"
    )
    p_restart.add_argument("components", nargs="+", metavar="component", choices=LEVELS["node"])
    sub.add_parser("status", help="show what runs")
    sub.add_parser("preflight", help="check this machine")
    args = parser.parse_args(argv)
    if getattr(args, "unless_external", False) and leave_to_external():
        return 0
    try:
        if args.command == "status":
            return status()
        if args.command == "preflight":
            problems = preflight("node")
            print("preflight: " + ("; ".join(problems) if problems else "ok"))
            return 1 if problems else 0
        if args.command == "up":
            check_preflight(args.level)  # before touching anything, even the lock file
        with locked():
            if args.command == "up":
                up(args.level)
                say(f"cluster up ({args.level} level). Use it with:")
                print(f"    export KUBECONFIG={KUBECONFIG}\n    kubectl get nodes,pods -A")
            elif args.command == "down":
                down()
            elif args.command == "restart":
                restart(args.components)
    except (HarnessError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
