"""`python -m avatar_devtools.realcluster up|down|status [--dir DIR] [--fleet FLEET]`.

`up` builds (or reuses) the binaries, starts the control plane (and the node agent with
`--fleet`) in DIR (default `<repo>/.cluster`), writes `DIR/kubeconfig`, links kubectl and helm
into `DIR/bin/`, and returns; the processes keep running until `down`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from avatar_devtools.realcluster import binaries
from avatar_devtools.realcluster.cluster import Cluster, ClusterError


def _say(line: str) -> None:
    sys.stdout.write(line + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m avatar_devtools.realcluster")
    parser.add_argument("command", choices=("up", "down", "status"))
    parser.add_argument("--dir", help="the cluster directory (default: <repo>/.cluster)")
    parser.add_argument("--fleet", help="a fleet file: start the node agent with these nodes")
    args = parser.parse_args(argv)
    try:
        directory = Path(args.dir) if args.dir else binaries.repo_root() / ".cluster"
        cluster = Cluster(directory, fleet=args.fleet)
        if args.command == "up":
            if cluster.running():
                _say(f"already running: {json.dumps(cluster.status())}")
                return 0
            cluster.start()
            _say(f"ready in {cluster.startup_seconds:.1f} s: {cluster.server}")
            _say(f"KUBECONFIG={cluster.kubeconfig} {cluster.kubectl_path} get nodes")
        elif args.command == "down":
            cluster.stop()
            _say("stopped")
        else:
            report = cluster.status()
            _say(json.dumps(report, indent=2))
            return 0 if report.get("ready") else 1
    except (binaries.BinariesUnavailable, ClusterError) as error:
        sys.stderr.write(f"realcluster {args.command}: {error}\n")
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
