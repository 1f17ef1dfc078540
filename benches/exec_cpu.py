#!/usr/bin/env python3
"""Where the CPU of an exec run goes, against the raw spawns it is compared with.

Runs the load tool (`tatzelwurm-bench --kind exec`), samples the whole machine with
`perf record -a` once while the load tool measures the raw spawn rate of `true` and once while
the real coordinator and worker run the same commands, and prints each phase's CPU a command by
process: the commands (before and after their `execve`), the spawning side (the load tool's
threads in the raw phase, the worker in the run), the coordinator, the load tool, kernel threads
and idle time. The exec ratio is the raw phase's total over the run's, so the difference between
the two columns is what tatzelwurm adds to a command (BENCHMARKS.md, session 16).

    python3 benches/exec_cpu.py --bin-dir $CARGO_TARGET_DIR/release --db kv

Needs `perf` and the right to sample every CPU (`kernel.perf_event_paranoid` ≤ 0, or root).
"""

import argparse
import collections
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time


def pid_of(name, parent):
    """The newest child of `parent` called `name`, or None."""
    out = subprocess.run(
        ["pgrep", "-n", "-P", str(parent), "-x", name], capture_output=True, text=True
    ).stdout
    return int(out) if out.strip() else None


def cpu_ticks(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def record(path, seconds):
    subprocess.run(
        ["perf", "record", "-a", "-F", "999", "-o", path, "--", "sleep", str(seconds)],
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def shares(path, who):
    """Each category's share of the samples in `path`; `who` maps process ids to categories."""
    out = subprocess.run(
        ["perf", "script", "-i", path, "-F", "comm,pid"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    counts = collections.Counter()
    for line in out.splitlines():
        parts = line.split()
        if len(parts) < 2 or not parts[-1].isdigit():
            continue
        pid, comm = int(parts[-1]), " ".join(parts[:-1])
        if pid == 0:
            kind = "idle"
        elif pid in who:
            kind = who[pid]
        elif comm.startswith(("kworker", "ksoftirqd", "rcu", "migration", "kdamond", "jbd2")):
            kind = "kernel threads"
        elif comm.startswith("perf"):
            kind = "perf"
        else:
            # Commands before their execve carry the name of the thread that cloned them.
            kind = "commands"
        counts[kind] += 1
    total = sum(counts.values())
    return {k: v / total for k, v in counts.items()}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bin-dir", required=True)
    ap.add_argument("--db", default="kv")
    ap.add_argument("--tasks", type=int, default=40000)
    ap.add_argument("--block", default="async")
    ap.add_argument("--seconds", type=float, default=4.0, help="length of each sample window")
    a = ap.parse_args()
    if shutil.which("perf") is None:
        sys.exit("exec_cpu.py needs perf (linux-tools / linux-perf)")
    env = dict(os.environ, TATZELWURM_BIN_DIR=a.bin_dir)
    cmd = [
        os.path.join(a.bin_dir, "tatzelwurm-bench"),
        "--tasks", str(a.tasks), "--kind", "exec", "--db", a.db, "--workers", "1",
        "--slots", "16", "--latency-samples", "0", "--block", a.block,
    ]
    with tempfile.TemporaryDirectory() as tmp:
        bench = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, text=True)
        while (worker := pid_of("workwurm", bench.pid)) is None:
            if bench.poll() is not None:
                sys.exit("the load tool ended before its worker started")
            time.sleep(0.05)
        coordinator = pid_of("tatzelwurm", bench.pid)
        # The raw spawns start once the worker is connected.
        time.sleep(1.0)
        record(f"{tmp}/raw", a.seconds)
        # The run starts when the coordinator gets busy (it only answers heartbeats before).
        last = cpu_ticks(coordinator)
        while True:
            time.sleep(0.1)
            now = cpu_ticks(coordinator)
            if now - last >= 2:
                break
            last = now
        time.sleep(0.5)
        record(f"{tmp}/run", a.seconds)
        out, _ = bench.communicate()
        sys.stdout.write(out)
        raw = shares(f"{tmp}/raw", {bench.pid: "spawning side"})
        run = shares(
            f"{tmp}/run",
            {bench.pid: "load tool", worker: "spawning side", coordinator: "coordinator"},
        )
    before = float(re.search(r"(\d+)/s before", out).group(1))
    rate = float(re.search(r"= (\d+) tasks/s", out).group(1))
    cores = os.cpu_count()
    print(f"\nCPU a command (µs), {cores} CPUs: raw phase at {before:.0f}/s, run at {rate:.0f}/s")
    kinds = ["commands", "spawning side", "coordinator", "load tool", "kernel threads", "idle", "perf"]
    for k in kinds:
        r = 1e6 * cores * raw.get(k, 0) / before
        u = 1e6 * cores * run.get(k, 0) / rate
        print(f"  {k:16s} {r:7.0f} {u:7.0f} {u - r:+7.0f}")
    print(f"  {'total':16s} {1e6 * cores / before:7.0f} {1e6 * cores / rate:7.0f}")


if __name__ == "__main__":
    main()
