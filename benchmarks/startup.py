"""Start-up cost: what every CLI command and every worker pays before doing any work.

Each probe runs in a fresh interpreter (as a user or Kubernetes starts one), several times, and
the best and median wall times are reported (the best is what the code costs; the median shows
how much the machine's load adds). Probes:

* ``p8fs --help``: the core CLI, which loads the plugins to list their commands;
* ``p8fs-run --help``: the runner's CLI;
* ``worker start``: what a storage worker does before its first message, besides connecting
  (:func:`p8fs_runner.service.warm_up`'s plugin part: load the plugins and build the provider
  registry; the tokenizer it also loads is measured apart, as it does not depend on plugins);
* ``first agent lookup``: the same, then ``registry.agents.get("MomentBuilder")``, which is where
  building the agents' models is paid since agent registration is deferred.

Each probe also says whether the agents' models were built (``p8fs.agents.moments`` imported).
Target: under 0.3 s for ``p8fs --help`` and worker start.

Run: ``uv run --all-packages --all-extras python benchmarks/startup.py [--runs N]``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

PROBES: dict[str, str] = {
    "p8fs --help": (
        "import sys\n"
        "from p8fs.cli import main\n"
        "try:\n"
        "    main(['--help'])\n"
        "except SystemExit:\n"
        "    pass\n"
    ),
    "p8fs-run --help": (
        "from p8fs_runner.cli import main\n"
        "try:\n"
        "    main(['--help'])\n"
        "except SystemExit:\n"
        "    pass\n"
    ),
    "worker start": ("from p8fs.plugins import get_registry\nget_registry().providers.names()\n"),
    "first agent lookup": (
        "from p8fs.plugins import get_registry\n"
        "get_registry().providers.names()\n"
        "get_registry().agents.get('MomentBuilder')\n"
    ),
}

#: Printed by every probe after its work: whether the agents' models were built.
_TAIL = (
    "\nimport sys, json\n"
    "print('P8FS-PROBE ' + json.dumps({'agents': 'p8fs.agents.moments' in sys.modules}), "
    "file=sys.stderr)\n"
)


def measure(code: str, runs: int) -> tuple[list[float], bool]:
    """Wall seconds of ``runs`` fresh interpreters running ``code``, and whether agents loaded."""
    times: list[float] = []
    agents = False
    for _ in range(runs):
        started = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-c", code + _TAIL], capture_output=True, text=True, check=True
        )
        times.append(time.perf_counter() - started)
        for line in done.stderr.splitlines():
            if line.startswith("P8FS-PROBE "):
                agents = json.loads(line.removeprefix("P8FS-PROBE "))["agents"]
    return times, agents


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=7, help="fresh interpreters per probe")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    args = parser.parse_args()
    subprocess.run([sys.executable, "-c", "import p8fs.cli"], check=True)  # warm the bytecode
    results = {}
    for name, code in PROBES.items():
        times, agents = measure(code, args.runs)
        results[name] = {
            "best_s": round(min(times), 3),
            "median_s": round(statistics.median(times), 3),
            "agents_built": agents,
        }
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    print(f"{'probe':<20} {'best':>7} {'median':>7}  agents built")
    for name, row in results.items():
        print(
            f"{name:<20} {row['best_s']:>6.3f}s {row['median_s']:>6.3f}s  "
            f"{'yes' if row['agents_built'] else 'no'}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
