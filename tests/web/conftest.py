"""Fixtures: a real coordinator serving HTTP on loopback, a real worker, and the CLI."""

import json
import os
import subprocess
import time
import urllib.error
import urllib.request

import pytest

BIN_DIR = os.environ.get("TATZELWURM_BIN_DIR", "/var/tmp/tatzelwurm-target/debug")


def binary(name):
    path = os.path.join(BIN_DIR, name)
    if not os.path.exists(path):
        pytest.fail(f"{path} not built: run `cargo build --workspace --bins` (or set TATZELWURM_BIN_DIR)")
    return path


class Http:
    """A coordinator with its TCP and HTTP addresses, its token, and helpers to call both."""

    def __init__(self, tmp_path):
        self.dir = str(tmp_path)
        self.log = open(os.path.join(self.dir, "coordinator.log"), "w")
        self.proc = subprocess.Popen(
            [binary("tatzelwurm"), "--listen", "127.0.0.1:0", "--http", "127.0.0.1:0", "--data-dir", self.dir,
             "--db", "mem://", "--lease", "3s"],
            stdout=subprocess.PIPE, stderr=self.log, text=True)
        lines = [self.proc.stdout.readline() for _ in range(3)]
        assert lines[0].startswith("tatzelwurm listening on "), lines
        self.addr = lines[0].split()[-1]
        assert lines[2].startswith("tatzelwurm http on "), lines
        self.base = lines[2].split()[-1].rstrip("/")
        self.token = open(os.path.join(self.dir, "token")).read().strip()
        self.workers = []
        deadline = time.time() + 30
        while self.request("GET", "/api/summary")[0] != 200:
            assert time.time() < deadline, "the coordinator never answered over HTTP"
            time.sleep(0.05)

    def request(self, method, path, body=None, token=True, raw=False):
        """(status, parsed JSON or text, headers); errors are answers, not exceptions."""
        data = None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
        req = urllib.request.Request(self.base + path, data=data, method=method)
        if token:
            req.add_header("Authorization", "Bearer " + (self.token if token is True else token))
        if data is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                status, text, headers = r.status, r.read().decode(), r.headers
        except urllib.error.HTTPError as e:
            status, text, headers = e.code, e.read().decode(), e.headers
        if raw or not headers.get("Content-Type", "").startswith("application/json"):
            return status, text, headers
        return status, json.loads(text), headers

    def ok(self, method, path, body=None, status=200):
        got, value, _ = self.request(method, path, body)
        assert got == status, (method, path, got, value)
        return value

    def cli(self, *args):
        out = subprocess.run([binary("actionwurm"), "--coordinator", self.addr, "--token-file",
                              os.path.join(self.dir, "token"), *args], capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        return out.stdout

    def worker(self, *args):
        p = subprocess.Popen([binary("workwurm"), "--coordinator", self.addr, "--token-file",
                              os.path.join(self.dir, "token"), *args],
                             stdout=subprocess.DEVNULL, stderr=open(os.path.join(self.dir, "worker.log"), "a"))
        self.workers.append(p)
        return p

    def stop(self):
        for w in self.workers:
            w.kill()
            w.wait()
        self.proc.kill()
        self.proc.wait()


@pytest.fixture
def http(tmp_path):
    h = Http(tmp_path)
    yield h
    h.stop()


def wait_for(cond, timeout=30, what="the condition"):
    deadline = time.time() + timeout
    while True:
        value = cond()
        if value:
            return value
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)
