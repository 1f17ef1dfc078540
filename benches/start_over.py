"""Times coordinator starts over one stored table, binaries side by side.

Copies a coordinator's data directory afresh for each start, starts `tatzelwurm` from each
binary directory given, and reports the time until it prints `listening`, its peak RSS, and the
phases its log names (`store replayed ... read_ms replay_ms`, `tables built took_ms`).

    python3 benches/start_over.py --data /var/tmp/ss/base --rounds 3 OLD_BIN_DIR NEW_BIN_DIR

The data directory is one a coordinator wrote (for example after `tatzelwurm-bench --queue-only
1000000 --db kv`, or a million tasks added by the Python client); it is never changed.
"""

import argparse
import os
import shutil
import subprocess
import tempfile
import time


def start(bindir: str, data: str) -> tuple[float, int, list[str]]:
    with tempfile.TemporaryDirectory(prefix="start-over-") as tmp:
        run = os.path.join(tmp, "data")
        shutil.copytree(data, run)
        log_path = os.path.join(tmp, "coordinator.log")
        with open(log_path, "w") as log:
            t0 = time.monotonic()
            p = subprocess.Popen(
                [os.path.join(bindir, "tatzelwurm"), "--listen", "127.0.0.1:0",
                 "--data-dir", run, "--http", "none"],
                stdout=subprocess.PIPE, stderr=log, text=True)
            try:
                for line in p.stdout:
                    if "listening" in line:
                        break
                took = time.monotonic() - t0
                with open(f"/proc/{p.pid}/status") as status:
                    peak = next(int(l.split()[1]) for l in status if l.startswith("VmHWM"))
            finally:
                p.kill()
                p.wait()
        with open(log_path) as log:
            phases = [l.split("INFO", 1)[1].strip() for l in log
                      if "store replayed" in l or "tables built" in l]
    return took, peak // 1024, phases


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, help="a coordinator's data directory")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("bindirs", nargs="+", help="directories holding a tatzelwurm binary")
    a = ap.parse_args()
    for _ in range(a.rounds):
        for b in a.bindirs:
            took, peak, phases = start(b, a.data)
            print(f"{b}: serving after {took:.2f} s, peak RSS {peak} MB | " + " | ".join(phases),
                  flush=True)


if __name__ == "__main__":
    main()
