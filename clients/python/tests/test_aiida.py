"""AiiDA on tatzelwurm, end to end: a real AiiDA profile (SQLite, `verdi presto --no-broker`)
whose broker is a real coordinator, a real daemon with two workers, real calculations of
`/bin/bash` on `localhost`. Needs `pip install -e './clients/python[aiida]'` (the entry point);
run alone with `python3 -m pytest clients/python/tests/test_aiida.py`."""

import contextlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

pytest.importorskip("aiida")
pytest.importorskip("kiwipy")

from importlib.metadata import entry_points  # noqa: E402

if not any(e.name == "tatzelwurm" for e in entry_points(group="aiida.brokers")):
    pytest.skip("the tatzelwurm package is not installed: pip install -e './clients/python[aiida]'",
                allow_module_level=True)


class Aiida:
    """A profile of its own in a temporary AIIDA_PATH, pointed at the test's coordinator."""

    def __init__(self, path, coordinator):
        self.env = dict(os.environ, AIIDA_PATH=str(path))
        self.coordinator = coordinator
        self.verdi("presto", "--no-broker", timeout=180)
        self.python(f"""
            from tatzelwurm.aiida import configure
            configure(None, {coordinator.addr!r}, {coordinator.token_file!r})
        """, load=False)
        self.verdi("code", "create", "core.code.installed", "--non-interactive", "--label", "bash",
                   "--computer", "localhost", "--filepath-executable", "/bin/bash")

    def verdi(self, *args, timeout=120, check=True):
        out = subprocess.run([sys.executable, "-m", "aiida", *args], env=self.env, capture_output=True, text=True,
                             timeout=timeout)
        if check:
            assert out.returncode == 0, f"verdi {' '.join(args)}: {out.stdout}{out.stderr}"
        return out

    def python(self, code, load=True, timeout=300):
        """Runs code with the profile loaded; returns what it printed as JSON, if anything."""
        prelude = "from aiida import load_profile, orm\nload_profile()\n" if load else ""
        out = subprocess.run([sys.executable, "-c", prelude + textwrap.dedent(code)], env=self.env,
                             capture_output=True, text=True, timeout=timeout)
        assert out.returncode == 0, out.stdout + out.stderr
        lines = out.stdout.strip().splitlines()
        return json.loads(lines[-1]) if lines else None

    def submit_add(self, x, y, sleep=0, runs=None):
        """Submits an ArithmeticAddCalculation (sleeping first on the computer; each run of its job
        appends a line to `runs`); returns its pk."""
        record = f"echo run >> {runs}; " if runs else ""
        return self.python(f"""
            from aiida.engine import submit
            from aiida.plugins import CalculationFactory
            b = CalculationFactory("core.arithmetic.add").get_builder()
            b.code = orm.load_code("bash@localhost")
            b.x, b.y = orm.Int({x}), orm.Int({y})
            b.metadata.options.prepend_text = "{record}sleep {sleep}"
            print(submit(b).pk)
        """)

    def holders(self):
        """{pid of a daemon worker: message tasks it holds}, from the coordinator's worker table."""
        with self.coordinator.client() as c:
            return {int(w["name"].rsplit("-", 1)[1]): w["running"] for w in c.workers()
                    if w["name"].startswith("aiida-") and w["state"] == "active"}

    def holder_of_running_job(self, pk, runs):
        """Waits until the job of calculation `pk` runs (`runs` exists) and its id is recorded;
        returns the pid of the daemon worker that holds the process."""
        deadline = time.time() + 120
        while not (runs.exists() and self.python(f"import json; print(json.dumps(orm.load_node({pk}).get_job_id()))")):
            assert time.time() < deadline, "the job did not start"
            time.sleep(0.5)
        (holder,) = [pid for pid, held in self.holders().items() if held]
        return holder

    def wait(self, *pks, timeout=240):
        """Waits until the processes are terminated; returns {pk: [state, exit status, sum or None]}."""
        return {int(k): v for k, v in self.python(f"""
            import json, time
            pks = {list(pks)}
            deadline = time.time() + {timeout}
            while time.time() < deadline and not all(orm.load_node(p).is_terminated for p in pks):
                time.sleep(0.5)
            out = {{}}
            for p in pks:
                n = orm.load_node(p)
                result = n.outputs.sum.value if n.is_finished_ok and "sum" in n.outputs else None
                if result is None and n.is_finished_ok and "result" in n.outputs:
                    result = n.outputs.result.value
                out[p] = [n.process_state.value if n.process_state else None, n.exit_status, result]
            print(json.dumps(out))
        """, timeout=timeout + 60).items()}

    @contextlib.contextmanager
    def broker_unreachable(self):
        """Points the profile at a port nobody listens on (the test's own, before it listens) while
        the block runs; yields that address."""
        import socket

        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        dead = f"127.0.0.1:{s.getsockname()[1]}"
        s.close()
        self.python(f"""
            from tatzelwurm.aiida import configure
            configure(None, {dead!r}, {self.coordinator.token_file!r})
        """, load=False)
        try:
            yield dead
        finally:
            self.python(f"""
                from tatzelwurm.aiida import configure
                configure(None, {self.coordinator.addr!r}, {self.coordinator.token_file!r})
            """, load=False)

    def state(self, pk):
        return self.python(f"import json; print(json.dumps(orm.load_node({pk}).process_state.value))")


def alive(pid):
    """Whether process `pid` runs (a zombie waiting for its parent does not)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.fixture(scope="module")
def aiida(tmp_path_factory):
    from conftest import Coordinator

    coordinator = Coordinator(tmp_path_factory.mktemp("coordinator"), db="kv", lease="2s")
    a = Aiida(tmp_path_factory.mktemp("aiida"), coordinator)
    a.verdi("daemon", "start", "2", timeout=180)
    yield a
    a.verdi("daemon", "stop", timeout=180, check=False)
    coordinator.stop()


def test_verdi_status_shows_the_broker(aiida):
    out = aiida.verdi("status", check=False)
    assert "broker:" in out.stdout and "tatzelwurm @" in out.stdout, out.stdout
    assert "not reachable" not in out.stdout


def test_a_calculation_and_a_workchain_finish_with_the_right_results(aiida):
    add = aiida.submit_add(2, 3)
    wc = aiida.python("""
        from aiida.engine import submit
        from aiida.plugins import WorkflowFactory
        b = WorkflowFactory("core.arithmetic.multiply_add").get_builder()
        b.code = orm.load_code("bash@localhost")
        b.x, b.y, b.z = orm.Int(2), orm.Int(3), orm.Int(4)
        print(submit(b).pk)
    """)
    done = aiida.wait(add, wc)
    assert done[add] == ["finished", 0, 5], done
    assert done[wc] == ["finished", 0, 10], done


def test_pause_play_kill_and_status_reach_a_running_process(aiida):
    pk = aiida.submit_add(1, 1, sleep=30)
    deadline = time.time() + 120
    while aiida.state(pk) not in ("waiting", "running"):
        assert time.time() < deadline
        time.sleep(0.5)
    out = aiida.verdi("process", "status", str(pk))
    assert "ArithmeticAddCalculation" in out.stdout, out.stdout
    aiida.verdi("process", "pause", str(pk), "--timeout", "30")
    assert aiida.python(f"import json; print(json.dumps(orm.load_node({pk}).paused))") is True
    aiida.verdi("process", "play", str(pk), "--timeout", "30")
    assert aiida.python(f"import json; print(json.dumps(orm.load_node({pk}).paused))") is False
    aiida.verdi("process", "kill", str(pk), "--timeout", "30")
    assert aiida.wait(pk)[pk][0] == "killed"


def test_a_process_longer_than_ten_leases_is_not_taken_from_its_worker(aiida):
    # The lease is 2 s: the calculation runs for 25.
    pk = aiida.submit_add(4, 5, sleep=25)
    assert aiida.wait(pk) == {pk: ["finished", 0, 9]}
    log = open(os.path.join(aiida.coordinator.dir, "coordinator.log")).read()
    assert "lease expired" not in log, log


def test_a_daemon_worker_killed_while_it_runs_a_process_leaves_it_to_the_other(aiida, tmp_path):
    runs = tmp_path / "runs"
    pk = aiida.submit_add(6, 7, sleep=10, runs=runs)
    # Killed once its job runs and is recorded: a worker killed between submitting a job and
    # recording it makes AiiDA submit it again, whatever the broker.
    victim = aiida.holder_of_running_job(pk, runs)
    os.kill(victim, signal.SIGKILL)
    assert aiida.wait(pk) == {pk: ["finished", 0, 13]}
    assert runs.read_text().count("run") == 1, "its job ran once"


def test_a_daemon_worker_frozen_past_the_lease_while_it_runs_a_process_exits_when_it_wakes(aiida, tmp_path):
    """Frozen (SIGSTOP) past the lease: the coordinator gives the process task to the other daemon
    worker, which continues the process. The woken worker hears that the task is no longer its own
    and exits instead of stepping the process beside the other one; the process finishes once."""
    runs = tmp_path / "runs"
    pk = aiida.submit_add(8, 9, sleep=8, runs=runs)
    victim = aiida.holder_of_running_job(pk, runs)
    os.kill(victim, signal.SIGSTOP)
    try:
        deadline = time.time() + 60
        while not any(held for pid, held in aiida.holders().items() if pid != victim):
            assert time.time() < deadline, f"no other worker took the process: {aiida.holders()}"
            time.sleep(0.2)
    finally:
        os.kill(victim, signal.SIGCONT)
    deadline = time.time() + 30
    while alive(victim):
        assert time.time() < deadline, "the woken worker went on"
        time.sleep(0.2)
    assert aiida.wait(pk) == {pk: ["finished", 0, 17]}
    assert runs.read_text().count("run") == 1, "its job ran once"


def test_the_coordinator_killed_and_restarted_while_processes_run_loses_none_and_runs_none_twice(aiida, tmp_path):
    runs = [tmp_path / f"runs-{i}" for i in range(3)]
    pks = [aiida.submit_add(i, 10, sleep=6, runs=r) for i, r in enumerate(runs)]
    deadline = time.time() + 120
    while sum(aiida.holders().values()) < 3:
        assert time.time() < deadline, aiida.holders()
        time.sleep(0.2)
    aiida.coordinator.restart()
    done = aiida.wait(*pks)
    assert done == {pk: ["finished", 0, i + 10] for i, pk in enumerate(pks)}, done
    assert [r.read_text().count("run") for r in runs] == [1, 1, 1], "each job ran once"


def test_verdi_process_repair_sees_the_tasks_waiting_in_the_launch_queue(aiida):
    aiida.verdi("daemon", "stop", timeout=180)
    pk = aiida.submit_add(20, 22)
    tasks = aiida.python("""
        import json
        from aiida.engine.processes.control import get_process_tasks
        from aiida.manage import get_manager
        print(json.dumps(get_process_tasks(get_manager().get_broker())))
    """)
    assert pk in tasks, tasks
    out = aiida.verdi("process", "repair", "--dry-run", timeout=180, check=False)
    assert out.returncode == 0 and "Traceback" not in out.stdout + out.stderr, out.stdout + out.stderr
    aiida.verdi("daemon", "start", "2", timeout=180)
    assert aiida.wait(pk) == {pk: ["finished", 0, 42]}


def test_verdi_status_says_when_the_coordinator_is_not_reachable(aiida):
    with aiida.broker_unreachable() as dead:
        started = time.time()
        out = subprocess.run([sys.executable, "-m", "aiida", "status"], env=aiida.env, capture_output=True,
                             text=True, timeout=120)
        assert dead in out.stdout + out.stderr, out.stdout + out.stderr
        assert "not reachable" in out.stdout + out.stderr or "cannot reach" in out.stdout + out.stderr
        assert time.time() - started < 60


def test_a_broker_that_just_failed_to_connect_is_named_unreachable_without_trying_again(aiida):
    # `verdi status` connects, then prints the broker's name, which says whether it is reachable:
    # the second must take the first's answer rather than wait for a connection again.
    with aiida.broker_unreachable():
        failed, tries_first, first, tries_later, later = aiida.python("""
            import json
            from aiida.manage import get_manager
            import tatzelwurm.kiwipy

            broker = get_manager().get_broker()
            try:
                broker.get_communicator()
                failed = False
            except Exception:
                failed = True
            tries = []

            def counted(*args, **kwargs):
                tries.append(1)
                raise ConnectionError("refused (counted)")

            tatzelwurm.kiwipy.TatzelwurmCommunicator = counted
            first = str(broker)
            tries_first = len(tries)
            broker.FAILURE_KEPT = 0  # the failure is old news: the next name tries again
            later = str(broker)
            print(json.dumps([failed, tries_first, first, len(tries), later]))
        """)
    assert failed
    assert (tries_first, tries_later) == (0, 1)
    assert first.endswith("<not reachable>") and later.endswith("<not reachable>"), (first, later)
