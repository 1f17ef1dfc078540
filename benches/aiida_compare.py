"""100 ArithmeticAddCalculations through an AiiDA daemon, on tatzelwurm and on AiiDA's own ZeroMQ
broker (`core.zeromq`), side by side in one run.

    python3 benches/aiida_compare.py [--calcs 100] [--rounds 2] [--workers 2]

Each round makes a fresh SQLite profile per broker (`verdi presto`), a `core.code.installed` code
for `/bin/bash` on `localhost`, starts a daemon, submits the calculations at once and times from
the first submission until every one has finished; rounds alternate between the brokers. Needs
`pip install -e './clients/python[aiida]'` and `TATZELWURM_BIN_DIR` (the release binaries).
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap

RUN = textwrap.dedent("""
    import json, sys, time
    from aiida import load_profile, orm
    from aiida.engine import submit
    from aiida.plugins import CalculationFactory
    load_profile()
    code = orm.load_code("bash@localhost")
    Add = CalculationFactory("core.arithmetic.add")
    n = int(sys.argv[1])
    t0 = time.perf_counter()
    pks = []
    for i in range(n):
        b = Add.get_builder()
        b.code, b.x, b.y = code, orm.Int(i), orm.Int(i)
        pks.append(submit(b).pk)
    submitted = time.perf_counter() - t0
    while not all(orm.load_node(p).is_terminated for p in pks):
        time.sleep(0.2)
    total = time.perf_counter() - t0
    ok = sum(orm.load_node(p).is_finished_ok and orm.load_node(p).outputs.sum.value == 2 * i
             for i, p in enumerate(pks))
    print(json.dumps({"seconds": total, "submit_seconds": submitted, "ok": ok}))
""")


def verdi(env, *args, timeout=600):
    out = subprocess.run([sys.executable, "-m", "aiida", *args], env=env, capture_output=True, text=True,
                         timeout=timeout)
    if out.returncode != 0:
        raise RuntimeError(f"verdi {' '.join(args)}: {out.stdout}{out.stderr}")
    return out.stdout


def one_round(broker, calcs, workers):
    home = tempfile.mkdtemp(prefix=f"bench-aiida-{broker}-")
    env = dict(os.environ, AIIDA_PATH=home)
    coordinator = None
    try:
        if broker == "tatzelwurm":
            data = os.path.join(home, "coordinator")
            bin_dir = os.environ.get("TATZELWURM_BIN_DIR", "/var/tmp/tatzelwurm-target/release")
            coordinator = subprocess.Popen(
                [os.path.join(bin_dir, "tatzelwurm"), "--listen", "127.0.0.1:0", "--data-dir", data],
                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
            addr = coordinator.stdout.readline().split()[-1]
            verdi(env, "presto", "--no-broker")
            subprocess.run([sys.executable, "-m", "tatzelwurm.aiida", "--address", addr, "--token-file",
                            os.path.join(data, "token")], env=env, check=True, capture_output=True)
        else:
            verdi(env, "presto", "--use-zeromq")
        verdi(env, "code", "create", "core.code.installed", "--non-interactive", "--label", "bash",
              "--computer", "localhost", "--filepath-executable", "/bin/bash")
        verdi(env, "daemon", "start", str(workers))
        out = subprocess.run([sys.executable, "-c", RUN, str(calcs)], env=env, capture_output=True, text=True,
                             timeout=1800)
        if out.returncode != 0:
            raise RuntimeError(out.stderr)
        result = json.loads(out.stdout.strip().splitlines()[-1])
        verdi(env, "daemon", "stop")
        return result
    finally:
        if coordinator is not None:
            coordinator.kill()
            coordinator.wait()
        shutil.rmtree(home, ignore_errors=True)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--calcs", type=int, default=100)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--workers", type=int, default=2)
    args = p.parse_args()
    results = {"tatzelwurm": [], "core.zeromq": []}
    for r in range(args.rounds):
        for broker in results:
            res = one_round(broker, args.calcs, args.workers)
            assert res["ok"] == args.calcs, res
            results[broker].append(res)
            print(f"round {r + 1} {broker}: {res}", file=sys.stderr, flush=True)
    print(f"| broker | {args.calcs} ArithmeticAddCalculations, submit to all finished (s) | of which submitting (s) |")
    print("|---|---|---|")
    for broker, rs in results.items():
        print(f"| {broker} | {statistics.median(x['seconds'] for x in rs):.1f} | "
              f"{statistics.median(x['submit_seconds'] for x in rs):.1f} |")


if __name__ == "__main__":
    main()
