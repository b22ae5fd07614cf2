"""How fast the CLI starts: `--help`, `--version`, and `status` against a real
daemon (started here on a temporary state directory), each run as a fresh
process the way an operator types it.

    .venv/bin/python -m bench.cli_start [--runs 15]

Prints min and median wall time per command, and what `import
orchestrator.cli` alone costs.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.figures import figure

# the commands with a figure of their own: median wall time, and its target
FIGURES = {
    "--help": ("cli_help_median", "<150"),
    "status": ("cli_status_median", "<150"),
    "import orchestrator.cli": ("cli_import_median", ""),
}


def timed(argv: list[str], env: dict[str, str], runs: int) -> list[float]:
    took = []
    for _ in range(runs):
        started = time.perf_counter()
        done = subprocess.run(argv, env=env, capture_output=True, check=False)
        took.append(time.perf_counter() - started)
        if done.returncode != 0:
            raise SystemExit(f"{' '.join(argv)} failed: {done.stderr.decode()[-500:]}")
    return took


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15)
    args = parser.parse_args()
    cli = shutil.which("orchestrator", path=str(Path(sys.executable).parent))
    if cli is None:
        raise SystemExit("no orchestrator script next to this Python: make .venv first")
    with tempfile.TemporaryDirectory() as tmp:
        state = Path(tmp) / "state"
        env = {k: v for k, v in os.environ.items() if not k.startswith("ORCHESTRATOR_")}
        env["ORCHESTRATOR_STATE_DIR"] = str(state)
        daemon = subprocess.Popen(
            [cli, "serve", "--listen", "127.0.0.1:0"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 30
            while not (state / "daemon.json").exists():
                if time.monotonic() > deadline or daemon.poll() is not None:
                    raise SystemExit("the daemon did not start")
                time.sleep(0.05)
            json.loads((state / "daemon.json").read_text())
            commands = {
                "--help": [cli, "--help"],
                "--version": [cli, "--version"],
                "status": [cli, "status"],
                "import orchestrator.cli": [sys.executable, "-c", "import orchestrator.cli"],
                "python -c pass": [sys.executable, "-c", "pass"],
            }
            for label, argv in commands.items():
                took = timed(argv, env, args.runs)
                print(
                    f"{label:<24} min {min(took) * 1000:6.1f} ms   "
                    f"median {statistics.median(took) * 1000:6.1f} ms   ({args.runs} runs)"
                )
                name, target = FIGURES.get(label, ("", ""))
                if name:
                    figure(name, statistics.median(took) * 1000, "ms", target)
        finally:
            daemon.terminate()
            daemon.wait(20)


if __name__ == "__main__":
    main()
