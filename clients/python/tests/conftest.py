"""Fixtures: a real tatzelwurm coordinator and real workers, on loopback and temporary dirs."""

import os
import subprocess
import sys
import time

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from tatzelwurm import Client  # noqa: E402

BIN_DIR = os.environ.get("TATZELWURM_BIN_DIR", "/var/tmp/tatzelwurm-target/debug")
HERE = os.path.dirname(__file__)


def binary(name):
    path = os.path.join(BIN_DIR, name)
    if not os.path.exists(path):
        pytest.fail(f"{path} not built: run `cargo build --workspace --bins` (or set TATZELWURM_BIN_DIR)")
    return path


class Coordinator:
    def __init__(self, tmp_path, db="mem://", lease="1s", extra=()):
        self.dir = str(tmp_path)
        self.extra = list(extra)
        self.db = db if db == "mem://" else f"surrealkv://{os.path.join(self.dir, 'store')}"
        self.lease = lease
        self.log = open(os.path.join(self.dir, "coordinator.log"), "a")
        self.token_file = os.path.join(self.dir, "token")
        self.workers = []
        self._spawn("127.0.0.1:0")

    def _spawn(self, listen):
        self.proc = subprocess.Popen(
            [binary("tatzelwurm"), "--listen", listen, "--data-dir", self.dir, "--db", self.db, "--lease", self.lease,
             *self.extra],
            stdout=subprocess.PIPE, stderr=self.log, text=True,
        )
        line = self.proc.stdout.readline()
        assert line.startswith("tatzelwurm listening on "), line
        self.addr = line.split()[-1]
        deadline = time.time() + 30
        while True:
            try:
                with Client(self.addr, token_file=self.token_file) as c:
                    c.summary()
                break
            except Exception:
                if time.time() > deadline:
                    raise
                time.sleep(0.05)

    def restart(self):
        """kill -9, then start again on the same port and data dir."""
        self.proc.kill()
        self.proc.wait()
        deadline = time.time() + 10
        while True:
            try:
                self._spawn(self.addr)
                return
            except AssertionError:
                if time.time() > deadline:
                    raise
                time.sleep(0.1)

    def client(self):
        return Client(self.addr, token_file=self.token_file)

    def rust_worker(self, *args):
        p = subprocess.Popen([binary("workwurm"), "--coordinator", self.addr, "--token-file", self.token_file, *args],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.workers.append(p)
        return p

    def python_worker(self, name):
        log = open(os.path.join(self.dir, f"{name}.log"), "w")
        p = subprocess.Popen([sys.executable, os.path.join(HERE, "py_worker.py"), self.addr, self.token_file, name],
                             stdout=subprocess.DEVNULL, stderr=log)
        self.workers.append(p)
        return p

    def actionwurm(self, *args):
        return subprocess.run([binary("actionwurm"), "--coordinator", self.addr, "--token-file", self.token_file, *args],
                              capture_output=True, text=True, timeout=60)

    def wait_workers(self, n):
        deadline = time.time() + 30
        with self.client() as c:
            while len([w for w in c.workers() if w["state"] == "active"]) < n:
                assert time.time() < deadline, "workers did not connect"
                time.sleep(0.05)

    def stop(self):
        for p in self.workers:
            if p.poll() is None:
                p.kill()
                p.wait()
        self.proc.kill()
        self.proc.wait()
        self.log.close()


@pytest.fixture
def coordinator(tmp_path):
    c = Coordinator(tmp_path)
    yield c
    c.stop()


@pytest.fixture
def durable_coordinator(tmp_path):
    c = Coordinator(tmp_path, db="kv", lease="10s")
    yield c
    c.stop()


@pytest.fixture
def small_frame_coordinator(tmp_path):
    """Frames of at most 2 KiB, so that a few hundred tasks stand in for millions."""
    c = Coordinator(tmp_path, extra=["--max-frame", "2048"])
    yield c
    c.stop()
