"""tatzelwurm.kiwipy against the real coordinator. The first group runs each scenario on kiwipy's
own in-process LocalCommunicator and on TatzelwurmCommunicator and requires the same observable
results; the rest needs several connections, a coordinator restart, or the CLI."""

import concurrent.futures
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid

import pytest

kiwipy = pytest.importorskip("kiwipy")

from tatzelwurm.kiwipy import TatzelwurmCommunicator  # noqa: E402

HERE = os.path.dirname(__file__)


def read_line(pipe, timeout=20):
    """One line from a child's stdout, or a failure after `timeout` seconds."""
    import select

    ready, _, _ = select.select([pipe], [], [], timeout)
    assert ready, "no line in time"
    return pipe.readline()


def unwrap(future, timeout=20):
    """The final value of a future that may resolve to further futures (kiwipy's pending)."""
    value = future.result(timeout=timeout)
    while isinstance(value, concurrent.futures.Future):
        value = value.result(timeout=timeout)
    return value


def wait_for(cond, timeout=20):
    deadline = time.time() + timeout
    while not cond():
        assert time.time() < deadline, "condition not met in time"
        time.sleep(0.01)


@pytest.fixture(params=["local", "tatzelwurm"])
def comm(request, coordinator):
    if request.param == "local":
        c = kiwipy.LocalCommunicator()
    else:
        c = TatzelwurmCommunicator(coordinator.addr, token_file=coordinator.token_file, namespace=uuid.uuid4().hex)
    yield c
    c.close()


def tatzelwurm_comm(coordinator, namespace, **kw):
    return TatzelwurmCommunicator(coordinator.addr, token_file=coordinator.token_file, namespace=namespace, **kw)


# ---- the same results as kiwipy's LocalCommunicator ---------------------------------------------

def test_a_task_returns_the_subscriber_value(comm):
    comm.add_task_subscriber(lambda c, task: {"doubled": task["n"] * 2})
    assert unwrap(comm.task_send({"n": 21})) == {"doubled": 42}


def test_a_subscriber_that_raises_gives_remote_exception(comm):
    def bad(c, task):
        raise ValueError(f"cannot {task}")

    comm.add_task_subscriber(bad)
    with pytest.raises(kiwipy.RemoteException) as e:
        unwrap(comm.task_send("fly"))
    assert "cannot fly" in str(e.value)


def test_a_subscriber_that_returns_a_future_defers_the_result(comm):
    later = concurrent.futures.Future()
    comm.add_task_subscriber(lambda c, task: later)
    outer = comm.task_send("slow")
    wait_for(outer.done)
    inner = outer.result()
    assert isinstance(inner, concurrent.futures.Future), "pending: a future for the result"
    assert not inner.done()
    later.set_result("finally")
    assert inner.result(timeout=20) == "finally"


def test_a_rejected_task_goes_to_the_next_subscriber(comm):
    seen = []

    def picky(c, task):
        seen.append("picky")
        raise kiwipy.TaskRejected("not mine")

    comm.add_task_subscriber(picky)
    comm.add_task_subscriber(lambda c, task: seen.append("taker") or "taken")
    assert unwrap(comm.task_send("t")) == "taken"
    assert seen == ["picky", "taker"]


def test_no_reply_returns_none_and_the_task_still_runs(comm):
    got = []
    comm.add_task_subscriber(lambda c, task: got.append(task))
    assert comm.task_send("quiet", no_reply=True) is None
    wait_for(lambda: got == ["quiet"])


def test_rpc_round_trip_errors_and_unroutable(comm):
    comm.add_rpc_subscriber(lambda c, msg: f"pong {msg}", "p1")

    def boom(c, msg):
        raise RuntimeError("no status")

    comm.add_rpc_subscriber(boom, "p2")
    assert unwrap(comm.rpc_send("p1", "ping")) == "pong ping"
    with pytest.raises(kiwipy.RemoteException):
        unwrap(comm.rpc_send("p2", "status"))
    with pytest.raises(kiwipy.UnroutableError):
        comm.rpc_send("nobody", "hello")
    with pytest.raises(kiwipy.DuplicateSubscriberIdentifier):
        comm.add_rpc_subscriber(lambda c, m: None, "p1")
    comm.remove_rpc_subscriber("p1")
    with pytest.raises(kiwipy.UnroutableError):
        comm.rpc_send("p1", "ping")
    with pytest.raises(ValueError):
        comm.remove_rpc_subscriber("p1")


def test_an_rpc_subscriber_may_answer_later(comm):
    later = concurrent.futures.Future()
    comm.add_rpc_subscriber(lambda c, msg: later, "slow")
    f = comm.rpc_send("slow", "x")
    threading.Timer(0.2, lambda: later.set_result("done")).start()
    assert unwrap(f) == "done"


def test_broadcasts_reach_subscribers_with_sender_subject_and_correlation(comm):
    got, filtered = [], []
    comm.add_broadcast_subscriber(lambda c, body, sender=None, subject=None, correlation_id=None:
                                  got.append((body, sender, subject, correlation_id)), "all")
    comm.add_broadcast_subscriber(kiwipy.BroadcastFilter(lambda c, body, *a, **k: filtered.append(body),
                                                         subject="state_changed.*"), "f")
    assert comm.broadcast_send({"k": 1}, sender="7", subject="state_changed.running", correlation_id="c")
    assert comm.broadcast_send("other", subject="misc")
    wait_for(lambda: len(got) == 2)
    assert got[0] == ({"k": 1}, "7", "state_changed.running", "c")
    assert got[1] == ("other", None, "misc", None)
    wait_for(lambda: filtered == [{"k": 1}])
    comm.remove_broadcast_subscriber("all")
    with pytest.raises(ValueError):
        comm.remove_broadcast_subscriber("all")
    with pytest.raises(ValueError):
        comm.remove_task_subscriber("never-added")


def test_a_closed_communicator_refuses_everything(comm):
    with comm as c:
        assert not c.is_closed()
    assert comm.is_closed()
    for call in (lambda: comm.task_send(1), lambda: comm.rpc_send("x", 1), lambda: comm.broadcast_send(1),
                 lambda: comm.add_rpc_subscriber(lambda c, m: m), lambda: comm.add_task_subscriber(lambda c, t: t),
                 lambda: comm.add_broadcast_subscriber(lambda c, **k: None)):
        with pytest.raises(kiwipy.CommunicatorClosed):
            call()


# ---- several connections ------------------------------------------------------------------------

def test_tasks_go_between_communicators_and_a_rejected_one_to_the_other_subscriber(coordinator):
    ns = uuid.uuid4().hex
    with tatzelwurm_comm(coordinator, ns) as sender, tatzelwurm_comm(coordinator, ns) as a, \
            tatzelwurm_comm(coordinator, ns) as b:
        seen = []

        def rejecting(c, task):
            seen.append("a")
            raise kiwipy.TaskRejected()

        a.add_task_subscriber(rejecting)
        f = sender.task_send("job")
        wait_for(lambda: seen == ["a"])
        time.sleep(0.3)
        assert seen == ["a"], "a task its only subscriber rejected waits; it is not offered again"
        b.add_task_subscriber(lambda c, task: seen.append("b") or f"b did {task}")
        assert unwrap(f) == "b did job"
        assert seen[-1] == "b"


def test_namespaces_never_mix(coordinator):
    with tatzelwurm_comm(coordinator, "one") as one, tatzelwurm_comm(coordinator, "two") as two, \
            tatzelwurm_comm(coordinator, "one") as one_again:
        heard_one, heard_two = [], []
        one.add_broadcast_subscriber(lambda c, body, **k: heard_one.append(body))
        two.add_broadcast_subscriber(lambda c, body, **k: heard_two.append(body))
        one_again.broadcast_send("for one")
        two.broadcast_send("for two")
        wait_for(lambda: heard_one == ["for one"] and heard_two == ["for two"])
        time.sleep(0.2)
        assert heard_one == ["for one"] and heard_two == ["for two"], "each exactly once"
        # An identifier is unique within its namespace across connections, free in another.
        one.add_rpc_subscriber(lambda c, m: "one", "42")
        two.add_rpc_subscriber(lambda c, m: "two", "42")
        with pytest.raises(kiwipy.DuplicateSubscriberIdentifier):
            one_again.add_rpc_subscriber(lambda c, m: "again", "42")
        assert unwrap(one_again.rpc_send("42", None)) == "one"
        # A task of namespace two never reaches a subscriber of namespace one.
        one.add_task_subscriber(lambda c, t: "wrong namespace")
        f = two.task_send("t")
        time.sleep(0.3)
        assert not f.done()
        two.add_task_subscriber(lambda c, t: "right namespace")
        assert unwrap(f) == "right namespace"


def test_a_subscriber_can_ask_which_task_and_attempt_it_is_called_for(coordinator):
    with tatzelwurm_comm(coordinator, uuid.uuid4().hex) as c:
        seen = []

        def subscriber(comm, task):
            task_id, attempt = comm.current_task()
            with coordinator.client() as cl:  # while it runs, the coordinator knows it by that id
                seen.append((attempt, cl.show(task_id)["state"]))
            return "done"

        c.add_task_subscriber(subscriber)
        assert unwrap(c.task_send("which")) == "done"
        assert seen == [(1, "running")] or seen == [(1, "assigned")], seen
        assert c.current_task() is None, "only on the thread that calls the subscriber, during the call"


def test_a_named_task_queue_with_next_task_and_iteration(coordinator):
    ns = uuid.uuid4().hex
    with tatzelwurm_comm(coordinator, ns) as c:
        q = c.task_queue("work")
        with pytest.raises(kiwipy.QueueEmpty):
            with q.next_task(timeout=0.2):
                pass
        futures = [q.task_send(i) for i in range(3)]
        with q.next_task(timeout=5) as task:
            assert task.body == 0
            task.process().set_result("zero")
        assert unwrap(futures[0]) == "zero"
        # Not processed in the context: back in the queue.
        with q.next_task(timeout=5) as task:
            assert task.body == 1
        bodies = []
        for task in q:
            bodies.append(task.body)
            task.process().set_result(task.body * 10)
        assert sorted(bodies) == [1, 2]
        assert unwrap(futures[1]) == 10 and unwrap(futures[2]) == 20


def test_a_task_held_while_the_application_blocks_for_ten_leases_is_not_requeued(tmp_path):
    from conftest import Coordinator

    coord = Coordinator(tmp_path, lease="300ms")
    try:
        ns = uuid.uuid4().hex
        with tatzelwurm_comm(coord, ns) as sender, tatzelwurm_comm(coord, ns) as worker:
            calls = []

            def blocking(c, task):
                calls.append(task)
                time.sleep(3.3)  # the callback thread is stuck: heartbeats go on
                return "survived"

            worker.add_task_subscriber(blocking)
            f = sender.task_send("long")
            assert unwrap(f, timeout=30) == "survived"
            assert calls == ["long"]
        log = open(os.path.join(coord.dir, "coordinator.log")).read()
        assert "lease expired" not in log and "silent past its lease" not in log, log
    finally:
        coord.stop()


def test_a_subscriber_that_wakes_to_a_task_given_away_meanwhile_hands_it_back_instead_of_running_it(tmp_path):
    """A subscriber process frozen with two tasks unread, past the lease: the coordinator gives
    them to another subscriber; the frozen one, woken, reads the first after a silence longer than
    the lease and hands it back instead of running it (it used to run it: two daemon workers on
    one AiiDA process), and trusts nothing else on that connection (the second frame, read from
    its buffer at once, would look fresh)."""
    from conftest import Coordinator

    coord = Coordinator(tmp_path, lease="1s")
    try:
        ns = uuid.uuid4().hex
        ran = os.path.join(coord.dir, "frozen-ran")
        frozen = subprocess.Popen(
            [sys.executable, os.path.join(HERE, "kiwipy_subscriber.py"), coord.addr, coord.token_file, ns, ran],
            stdout=subprocess.PIPE, stderr=open(os.path.join(coord.dir, "subscriber.log"), "w"), text=True)
        try:
            assert read_line(frozen.stdout).strip() == "ready"
            frozen.send_signal(signal.SIGSTOP)
            with tatzelwurm_comm(coord, ns) as sender:
                fs = [sender.task_send(name) for name in ("first", "second")]
                with coord.client() as cl:
                    # Dispatched to the frozen subscriber (the only one), then lost at the lease.
                    wait_for(lambda: sum(
                        a["outcome"] == "lost" for t in cl.list(limit=5) for a in cl.show(t["id"])["attempts"]) == 2)
                frozen.send_signal(signal.SIGCONT)
                with tatzelwurm_comm(coord, ns) as awake:
                    runs = []
                    awake.add_task_subscriber(lambda c, t: (runs.append(t), "ran here")[1])
                    # The woken subscriber may also take a task again, on its new connection:
                    # that is a later attempt, run once. What must not happen is a run of a
                    # stale first attempt beside it.
                    assert sorted(unwrap(f, timeout=30) for f in fs) in (
                        ["ran", "ran"], ["ran", "ran here"], ["ran here", "ran here"])
                time.sleep(0.5)  # the time a stale run would need to show
            lines = open(ran).read().splitlines() if os.path.exists(ran) else []
            assert sorted(lines + runs) == ["first", "second"], (
                f"the woken process ran {lines}, the other subscriber {runs}")
            assert "handed back, not run" in open(os.path.join(coord.dir, "subscriber.log")).read()
        finally:
            frozen.kill()
            frozen.wait()
    finally:
        coord.stop()


def test_a_subscriber_that_wakes_to_find_its_running_task_given_away_is_told_and_stops(tmp_path):
    """A subscriber process frozen past the lease while its task's work runs: the coordinator gives
    the task to another subscriber, which answers it. When the first wakes, its reconnect's
    `reattached` drops the task, and `on_tasks_lost` hears of it (here, as in AiiDA's daemon
    worker, the process exits, so that its work does not go on beside the new subscriber's)."""
    from conftest import Coordinator

    coord = Coordinator(tmp_path, lease="1s")
    try:
        ns = uuid.uuid4().hex
        ran = os.path.join(coord.dir, "frozen-ran")
        frozen = subprocess.Popen(
            [sys.executable, os.path.join(HERE, "kiwipy_subscriber.py"), coord.addr, coord.token_file, ns, ran,
             "works"],
            stdout=subprocess.PIPE, stderr=open(os.path.join(coord.dir, "subscriber.log"), "w"), text=True)
        try:
            assert read_line(frozen.stdout).strip() == "ready"
            with tatzelwurm_comm(coord, ns) as sender:
                f = sender.task_send("long")
                wait_for(lambda: os.path.exists(ran) and open(ran).read() == "long\n")
                frozen.send_signal(signal.SIGSTOP)
                with coord.client() as cl:
                    wait_for(lambda: [a["outcome"] for t in cl.list(limit=5) for a in cl.show(t["id"])["attempts"]]
                             == ["lost"])
                with tatzelwurm_comm(coord, ns) as awake:
                    awake.add_task_subscriber(lambda c, t: "ran here")
                    assert unwrap(f, timeout=30) == "ran here"
                    frozen.send_signal(signal.SIGCONT)
                    assert frozen.wait(timeout=30) == 3, open(os.path.join(coord.dir, "subscriber.log")).read()
            assert open(ran).read().splitlines() == ["long", "lost long"]
            assert "was given to another subscriber" in open(os.path.join(coord.dir, "subscriber.log")).read()
        finally:
            frozen.kill()
            frozen.wait()
    finally:
        coord.stop()


def test_a_reply_survives_a_coordinator_restart_between_the_end_and_the_senders_return(tmp_path):
    from conftest import Coordinator

    coord = Coordinator(tmp_path, db="kv", lease="10s")
    try:
        ns = uuid.uuid4().hex
        sender = subprocess.Popen(
            [sys.executable, os.path.join(HERE, "kiwipy_sender.py"), coord.addr, coord.token_file, ns],
            stdout=subprocess.PIPE, stderr=open(os.path.join(coord.dir, "sender.log"), "w"), text=True)
        assert read_line(sender.stdout).strip() == "sent"
        # The sender stops listening; the task ends meanwhile; the coordinator dies and returns.
        with tatzelwurm_comm(coord, ns) as worker:
            later = concurrent.futures.Future()
            taken = threading.Event()
            worker.add_task_subscriber(lambda c, t: (taken.set(), later)[1])
            assert taken.wait(20)
            # The sender stops; the coordinator dies and returns; the worker reattaches and
            # answers while the sender is away; the coordinator dies and returns once more.
            sender.send_signal(signal.SIGSTOP)
            coord.restart()
            with coord.client() as cl:
                wait_for(lambda: any(w["state"] == "active" and w["id"] == worker.worker_id for w in cl.workers()))
                later.set_result("answer to question")
                wait_for(lambda: any(t["state"] == "completed" for t in cl.list(limit=5)))
                (done,) = [t for t in cl.list(limit=5) if t["state"] == "completed"]
                assert done["attempts"] == 1, "held across the restart, never given away"
        coord.restart()
        sender.send_signal(signal.SIGCONT)
        out, _ = sender.communicate(timeout=60)
        assert out.strip() == "answer to question", out
    finally:
        coord.stop()


# ---- the command line ---------------------------------------------------------------------------

def test_actionwurm_rpc_broadcast_listen_and_queue_list(coordinator):
    ns = uuid.uuid4().hex
    with tatzelwurm_comm(coordinator, ns) as c:
        c.add_rpc_subscriber(lambda comm, msg: {"status": "running", "asked": msg}, "99")
        out = coordinator.actionwurm("--namespace", ns, "--json", "rpc", "99", '{"intent": "status"}')
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout) == {"status": "running", "asked": {"intent": "status"}}
        out = coordinator.actionwurm("--namespace", ns, "rpc", "nobody", "x")
        assert out.returncode != 0 and "no connection holds" in out.stderr
        # listen prints what a broadcast carries, one JSON line each.
        listen = subprocess.Popen(
            [os.path.join(os.environ.get("TATZELWURM_BIN_DIR", "/var/tmp/tatzelwurm-target/debug"), "actionwurm"),
             "--coordinator", coordinator.addr, "--token-file", coordinator.token_file, "--namespace", ns, "--json",
             "listen", "--subject", "state_changed.*"], stdout=subprocess.PIPE, text=True)
        try:
            heard = []
            c.add_broadcast_subscriber(lambda comm, body, **k: heard.append(body))
            deadline = time.time() + 20
            # Until the listener is in place, a broadcast reaches only the communicator.
            while True:
                out = coordinator.actionwurm("--namespace", ns, "--json", "broadcast", "--subject",
                                             "state_changed.running", "--sender", "99", '"hello"')
                assert out.returncode == 0, out.stderr
                if json.loads(out.stdout)["listeners"] == 2:
                    break
                assert time.time() < deadline
                time.sleep(0.1)
            line = json.loads(read_line(listen.stdout))
            while line["subject"] != "state_changed.running" or line["body"] != "hello":
                line = json.loads(read_line(listen.stdout))
            assert line == {"body": "hello", "sender": "99", "subject": "state_changed.running", "correlation_id": None}
        finally:
            listen.kill()
            listen.wait()
        c.task_queue("q1").task_send("waiting", no_reply=True)
        out = coordinator.actionwurm("--namespace", ns, "--json", "queue", "list")
        assert out.returncode == 0, out.stderr
        queues = {q["name"]: q for q in json.loads(out.stdout)}
        assert queues["q1"]["waiting"] == 1 and queues["q1"]["subscribers"] == 0
        # Another namespace sees none of it.
        out = coordinator.actionwurm("--namespace", "elsewhere", "--json", "queue", "list")
        assert json.loads(out.stdout) == []
