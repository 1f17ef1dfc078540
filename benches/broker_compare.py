"""kiwipy round trips through three brokers, side by side in one run: tatzelwurm (through
`tatzelwurm.kiwipy`), RabbitMQ (Debian's rabbitmq-server through kiwipy's own
`RmqThreadCommunicator`) and AiiDA's ZeroMQ broker (`aiida.brokers.zeromq`).

    python3 benches/broker_compare.py [--tasks 1000] [--rpcs 1000] [--rounds 3] [--brokers ...]

Every broker gets the same work from two communicators in this process, a sender and a worker.
Bodies are encoded as each communicator does by default: YAML for kiwipy's RMQ communicator, JSON
for AiiDA's ZeroMQ one; tatzelwurm runs with YAML (kiwipy's RMQ default) and with its own
default, MessagePack, then with MessagePack in two less durable settings that tell what the disk
costs: `--sync 200ms` (commits reach the OS at once and the disk every 200 ms: a kill -9 loses
nothing, a power loss may; AiiDA's ZeroMQ broker writes its queue files without fsync, which is
the same class) and `mem://` (nothing kept).
- task round trips: `task_send(i).result()` one after the other (latency bound), per second;
- tasks handled one at a time: `task_send(i)`, then wait until the worker's handler has run it
  before sending the next (the results that come back are checked afterwards): the one figure
  that AiiDA's ZeroMQ broker, which returns no results, has in common with the others;
- pipelined tasks: `--tasks` sent at once, then every result awaited, per second;
- RPC round trips: `rpc_send(...).result()` one after the other: p50 and p99.
Rounds alternate between the brokers, so that the machine's drift hits them alike; the table
gives the median of the rounds. Every broker listens on loopback or on a Unix socket only.

Needs: `TATZELWURM_BIN_DIR` (the release binaries), `pip install kiwipy[rmq] aiida-core`,
`apt-get install rabbitmq-server` (started and stopped by this script, on 127.0.0.1 only).
"""

import argparse
import concurrent.futures
import functools
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid

import yaml

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "clients", "python"))

ENCODE = functools.partial(yaml.dump, encoding="utf-8")
DECODE = functools.partial(yaml.load, Loader=yaml.FullLoader)


def unwrap(f, timeout=60):
    v = f.result(timeout=timeout)
    while isinstance(v, concurrent.futures.Future):
        v = v.result(timeout=timeout)
    return v


# ---- brokers -------------------------------------------------------------------------------------

class Tatzelwurm:
    name = "tatzelwurm (YAML bodies, as kiwipy's RMQ default)"
    returns_results = True
    encoder, decoder = ENCODE, DECODE
    store = "surrealkv://{dir}/store"
    flags = []

    def __enter__(self):
        from tatzelwurm.kiwipy import TatzelwurmCommunicator

        self.dir = tempfile.mkdtemp(prefix="bench-tw-")
        bin_dir = os.environ.get("TATZELWURM_BIN_DIR", "/var/tmp/tatzelwurm-target/release")
        self.proc = subprocess.Popen(
            [os.path.join(bin_dir, "tatzelwurm"), "--listen", "127.0.0.1:0", "--data-dir", self.dir,
             "--db", self.store.format(dir=self.dir), *self.flags],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        self.addr = self.proc.stdout.readline().split()[-1]
        token = os.path.join(self.dir, "token")
        for _ in range(600):
            try:
                self.make = lambda: TatzelwurmCommunicator(self.addr, token_file=token, namespace="bench",
                                                           encoder=self.encoder, decoder=self.decoder)
                self.make().close()
                break
            except Exception:
                time.sleep(0.05)
        return self

    def __exit__(self, *exc):
        self.proc.kill()
        self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


class RabbitMQ:
    name = "RabbitMQ, kiwipy's `RmqThreadCommunicator` (YAML)"
    returns_results = True

    def __enter__(self):
        from kiwipy.rmq import RmqThreadCommunicator

        self.dir = tempfile.mkdtemp(prefix="bench-rmq-")
        # Debian's wrapper runs the server as the rabbitmq user: its directories must be its own.
        shutil.chown(self.dir, "rabbitmq", "rabbitmq")
        env = dict(os.environ, RABBITMQ_NODE_IP_ADDRESS="127.0.0.1", RABBITMQ_NODENAME="bench@localhost",
                   RABBITMQ_MNESIA_BASE=self.dir, RABBITMQ_LOG_BASE=self.dir, RABBITMQ_DIST_PORT="25672",
                   ERL_EPMD_ADDRESS="127.0.0.1",
                   RABBITMQ_SERVER_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}")
        self.env = env
        subprocess.run(["rabbitmq-server", "-detached"], env=env, check=True, stdout=subprocess.DEVNULL)
        deadline = time.time() + 120
        while True:  # the AMQP port opens once the node has booted
            try:
                socket.create_connection(("127.0.0.1", 5672), timeout=1).close()
                break
            except OSError:
                if time.time() > deadline:
                    raise RuntimeError("rabbitmq-server did not start within 120 s") from None
                time.sleep(0.2)
        suffix = uuid.uuid4().hex[:8]
        self.make = lambda: RmqThreadCommunicator.connect(
            connection_params={"url": "amqp://guest:guest@127.0.0.1:5672/"},
            message_exchange=f"bench.messages.{suffix}", task_exchange=f"bench.tasks.{suffix}",
            task_queue=f"bench.tasks.{suffix}", task_prefetch_count=200, testing_mode=True)
        return self

    def __exit__(self, *exc):
        subprocess.run(["rabbitmqctl", "-n", "bench@localhost", "stop"], env=self.env,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=120)
        shutil.rmtree(self.dir, ignore_errors=True)


class ZeroMQ:
    name = "AiiDA's ZeroMQ broker (JSON; returns no results)"
    returns_results = False

    def __enter__(self):
        from aiida.brokers.zeromq.communicator import ZeromqCommunicator
        from aiida.brokers.zeromq.server import ZeromqBrokerServer

        self.dir = tempfile.mkdtemp(prefix="bench-zmq-")
        self.server = ZeromqBrokerServer(os.path.join(self.dir, "storage"), os.path.join(self.dir, "sockets"))
        self.server.start()
        self.thread = threading.Thread(target=self.server.run_forever, daemon=True)
        self.thread.start()

        def make():
            c = ZeromqCommunicator(self.server.router_endpoint, task_prefetch_count=200)
            c.start()
            return c

        self.make = make
        return self

    def __exit__(self, *exc):
        self.server.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


class TatzelwurmMsgpack(Tatzelwurm):
    name = "tatzelwurm (MessagePack bodies, its default)"
    encoder = decoder = None


class TatzelwurmSyncInterval(TatzelwurmMsgpack):
    name = "tatzelwurm (MessagePack bodies, `--sync 200ms`: kill -9 safe, not power-loss safe)"
    flags = ["--sync", "200ms"]


class TatzelwurmMemory(TatzelwurmMsgpack):
    name = "tatzelwurm (MessagePack bodies, in-memory store: not durable)"
    store = "mem://"


BROKERS = {"tatzelwurm": Tatzelwurm, "tatzelwurm-msgpack": TatzelwurmMsgpack, "tatzelwurm-mem": TatzelwurmMemory,
           "tatzelwurm-sync": TatzelwurmSyncInterval, "rabbitmq": RabbitMQ,
           "zeromq": ZeroMQ}


# ---- the work ------------------------------------------------------------------------------------

def measure(broker, tasks, rpcs):
    sender, worker = broker.make(), broker.make()
    handled = [0]
    cond = threading.Condition()

    def double(comm, task):
        with cond:
            handled[0] += 1
            cond.notify_all()
        return {"answer": task["n"] * 2}

    def until_handled(n):
        with cond:
            assert cond.wait_for(lambda: handled[0] >= n, timeout=60)

    # AiiDA's ZeroMQ broker returns no results (the sender's future resolves to True once the task
    # is queued): there the round trip ends when the worker has handled the task.
    returns = broker.returns_results
    try:
        worker.add_task_subscriber(double)
        worker.add_rpc_subscriber(lambda comm, msg: {"state": "running", "asked": msg}, "bench-process")

        def one(i):
            before = handled[0]
            f = sender.task_send({"n": i})
            if returns:
                assert unwrap(f) == {"answer": 2 * i}
            else:
                until_handled(before + 1)

        one(0)  # warm up
        assert unwrap(sender.rpc_send("bench-process", "status"))["state"] == "running"
        sequential = None
        if returns:
            t0 = time.perf_counter()
            for i in range(tasks):
                one(i)
            sequential = tasks / (time.perf_counter() - t0)
        # One at a time until the worker has handled each task: the only figure AiiDA's ZeroMQ
        # broker has. The results that do come back are checked afterwards.
        later = []
        t0 = time.perf_counter()
        for i in range(tasks):
            before = handled[0]
            later.append(sender.task_send({"n": i}))
            until_handled(before + 1)
        handled_rate = tasks / (time.perf_counter() - t0)
        if returns:
            for i, f in enumerate(later):
                assert unwrap(f) == {"answer": 2 * i}
        start = handled[0]
        t0 = time.perf_counter()
        futures = [sender.task_send({"n": i}) for i in range(tasks)]
        if returns:
            for i, f in enumerate(futures):
                assert unwrap(f) == {"answer": 2 * i}
        else:
            until_handled(start + tasks)
        pipelined = tasks / (time.perf_counter() - t0)
        lat = []
        for i in range(rpcs):
            t = time.perf_counter()
            unwrap(sender.rpc_send("bench-process", i))
            lat.append((time.perf_counter() - t) * 1000)
        lat.sort()
        return {"sequential": sequential, "handled": handled_rate, "pipelined": pipelined,
                "rpc_p50": lat[len(lat) // 2], "rpc_p99": lat[min(len(lat) - 1, int(len(lat) * 0.99))]}
    finally:
        sender.close()
        worker.close()


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tasks", type=int, default=1000)
    p.add_argument("--rpcs", type=int, default=1000)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--brokers",
                   default="tatzelwurm,tatzelwurm-msgpack,tatzelwurm-sync,tatzelwurm-mem,rabbitmq,zeromq")
    args = p.parse_args()
    names = args.brokers.split(",")
    results = {n: [] for n in names}
    for r in range(args.rounds):
        for n in names:
            with BROKERS[n]() as b:
                m = measure(b, args.tasks, args.rpcs)
            results[n].append(m)
            print(f"round {r + 1} {n}: {m}", file=sys.stderr, flush=True)
    print(f"| broker | task round trips/s, one at a time | tasks handled/s, one at a time | "
          f"tasks/s ({args.tasks} in flight) | RPC p50 ms | RPC p99 ms |")
    print("|---|---|---|---|---|---|")
    for n in names:
        runs = results[n]
        med = {k: (None if runs[0][k] is None else statistics.median(m[k] for m in runs)) for k in runs[0]}
        trips = "no results" if med["sequential"] is None else f"{med['sequential']:,.0f}"
        print(f"| {BROKERS[n].name} | {trips} | {med['handled']:,.0f} | {med['pipelined']:,.0f} | "
              f"{med['rpc_p50']:.2f} | {med['rpc_p99']:.2f} |")

if __name__ == "__main__":
    main()
