"""Runs `true` as tasks on tatzelwurm and on HyperQueue side by side, in alternating rounds.

Both get one worker with 16 slots (HyperQueue: 16 cores) on this machine and the same number of
tasks; each round reports tasks/s from the first submit to the last result. tatzelwurm's figure
and the raw spawn rate of `true` come from `tatzelwurm-bench --kind exec` (durable surrealkv
store, default `--sync every`); HyperQueue's from its Python package, whose `LocalCluster` runs
the HyperQueue server and a worker in this process (the same Rust code as the `hq` binary), with
task output discarded (`stdout=None`, as `hq submit --stdout none`), which spares it two files a
task.

    python3 -m pip install 'hyperqueue==0.27.0'
    python3 benches/against_hyperqueue.py --bin-dir /var/tmp/tatzelwurm-target/release --rounds 3

HyperQueue is not on crates.io and its source cannot be fetched from this machine, so it runs
from the wheel on PyPI (manylinux, version 0.27.0) rather than built from source.
"""

import argparse
import os
import re
import subprocess
import tempfile
import time


def tatzelwurm_round(bin_dir: str, tasks: int, slots: int, prefetch: int) -> tuple[float, float]:
    """Returns (tasks/s, raw spawns/s) from one run of tatzelwurm-bench."""
    out = subprocess.run(
        [os.path.join(bin_dir, "tatzelwurm-bench"), "--tasks", str(tasks), "--kind", "exec",
         "--db", "kv", "--workers", "1", "--slots", str(slots), "--prefetch", str(prefetch),
         "--latency-samples", "0"],
        env={**os.environ, "TATZELWURM_BIN_DIR": bin_dir},
        check=True, capture_output=True, text=True).stdout
    rate = float(re.search(r"throughput \(exec, kv\): .*= (\d+) tasks/s", out).group(1))
    # The load tool measures the raw rate before and after its run and prints their mean.
    raw = float(re.search(r"raw spawn rate of `true`: .*?(\d+)/s mean", out).group(1))
    return rate, raw


def hyperqueue_round(tasks: int, slots: int) -> float:
    """Returns tasks/s for `tasks` runs of `true` on a local HyperQueue cluster."""
    from hyperqueue import Job, LocalCluster
    from hyperqueue.cluster import WorkerConfig

    with tempfile.TemporaryDirectory(prefix="hq-bench-") as server_dir:
        with LocalCluster(server_dir=server_dir, worker_config=WorkerConfig(cores=slots)) as cluster:
            client = cluster.client()
            # A first job waits for the worker to join, as tatzelwurm-bench waits for its workers.
            warm = Job()
            for _ in range(slots):
                warm.program(["true"], stdout=None, stderr=None)
            client.wait_for_jobs([client.submit(warm)])
            job = Job()
            for _ in range(tasks):
                job.program(["true"], stdout=None, stderr=None)
            start = time.monotonic()
            submitted = client.submit(job)
            client.wait_for_jobs([submitted])
            return tasks / (time.monotonic() - start)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bin-dir", required=True, help="where tatzelwurm's release binaries are")
    p.add_argument("--tasks", type=int, default=5000)
    p.add_argument("--slots", type=int, default=16)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--prefetch", type=int, default=0,
                   help="tasks tatzelwurm's worker holds beyond its slots (workwurm --prefetch)")
    a = p.parse_args()
    print(f"{a.tasks} tasks of `true`, 1 worker, {a.slots} slots (tatzelwurm: prefetch "
          f"{a.prefetch}), {a.rounds} rounds alternating")
    for r in range(1, a.rounds + 1):
        rate, raw = tatzelwurm_round(a.bin_dir, a.tasks, a.slots, a.prefetch)
        hq = hyperqueue_round(a.tasks, a.slots)
        print(f"round {r}: tatzelwurm {rate:.0f}/s (raw spawns {raw:.0f}/s, ratio {rate / raw:.2}); "
              f"HyperQueue {hq:.0f}/s; tatzelwurm / HyperQueue {rate / hq:.2f}")


if __name__ == "__main__":
    main()
