"""The Python client and worker against the real coordinator, Rust workers and actionwurm."""

import asyncio
import json
import os
import time
import uuid

import pytest

from conftest import Coordinator
from tatzelwurm import AsyncClient, TatzelwurmError, custom_task, exec_task, sleep_task


def test_python_worker_runs_custom_tasks_added_by_actionwurm(coordinator):
    coordinator.python_worker("py-1")
    coordinator.wait_workers(1)
    out = coordinator.actionwurm("--json", "task", "add", "--play", "--custom", "py_upper", "--data", '"hello"')
    assert out.returncode == 0, out.stderr
    task_id = json.loads(out.stdout)[0]["id"]
    out = coordinator.actionwurm("task", "wait", task_id)
    assert out.returncode == 0, out.stderr
    shown = json.loads(coordinator.actionwurm("--json", "task", "show", task_id).stdout)
    assert shown["state"] == "completed"
    assert shown["attempts"][0]["output"] == "HELLO"
    assert shown["user_data"] == {"seen": "hello", "attempt": 1}
    workers = json.loads(coordinator.actionwurm("--json", "worker", "list").stdout)
    assert workers[0]["name"] == "py-1"
    assert sorted(workers[0]["handlers"]) == ["echo", "py_async", "py_fail", "py_upper"]


def test_a_python_worker_is_given_no_command_which_waits_for_a_worker_that_runs_commands(coordinator):
    """The Python worker runs its handlers only (its hello says `custom_only`): a command added
    while it is the only worker waits, and does not fail there (the fault campaign with a Python
    worker saw every such task fail three times with "this worker does not serve exec")."""
    coordinator.python_worker("py-only")
    coordinator.wait_workers(1)
    with coordinator.client() as c:
        (cmd,) = c.add(exec_task(["true"]), play=True)
        (custom,) = c.add(custom_task("py_upper", "x"), play=True)
        assert c.wait(custom, timeout=30) == {custom: "completed"}
        shown = c.show(cmd)
        assert (shown["state"], shown["attempts"]) == ("ready", []), shown
        assert shown["waiting"], shown
        coordinator.rust_worker()
        assert c.wait(cmd, timeout=30) == {cmd: "completed"}
        attempts = c.show(cmd)["attempts"]
        assert len(attempts) == 1 and attempts[0]["worker_name"] != "py-only", attempts


def test_coroutine_handlers_and_raised_exceptions(coordinator):
    coordinator.python_worker("py-2")
    coordinator.wait_workers(1)
    with coordinator.client() as c:
        ok, bad = c.add(custom_task("py_async", {"n": 21, "sleep": 0.05}), custom_task("py_fail", [1, 2]), play=True)
        states = c.wait(ok, bad)
        assert states == {ok: "completed", bad: "failed"}
        assert c.show(ok)["attempts"][0]["output"] == {"double": 42}
        err = c.show(bad)["attempts"][0]["error"]
        assert "ValueError" in err and "bad input [1, 2]" in err
        # Retried with two more attempts, it fails twice more; every attempt is kept.
        assert c.retry(str(bad), attempts=2) == [bad]
        assert c.wait(bad) == {bad: "failed"}
        assert [a["outcome"] for a in c.show(bad)["attempts"]] == ["failed"] * 3
        with pytest.raises(TatzelwurmError) as e:
            c.retry(str(ok))
        assert e.value.kind == "invalid_state"


def test_tasks_added_by_python_run_on_a_rust_worker(coordinator):
    coordinator.rust_worker("--type", "sync", "--slots", "2")
    coordinator.rust_worker("--type", "async")
    coordinator.wait_workers(2)
    with coordinator.client() as c:
        ids = c.add(
            exec_task(["sh", "-c", "echo $GREETING from $PWD"], env={"GREETING": "hi"}, cwd="/tmp",
                      name="greet", block="sync", priority=5, tags={"lang": "py"}, max_attempts=2, timeout=30),
            sleep_task(0.05, block="async"),
            custom_task("echo", {"k": [1, 2, 3]}, user_key="step", user_data={"v": 1}),
            play=True,
        )
        assert all(isinstance(i, uuid.UUID) for i in ids)
        assert c.wait(*ids) == {i: "completed" for i in ids}
        greet = c.show(ids[0])
        assert greet["attempts"][0]["stdout_tail"] == "hi from /tmp\n"
        assert greet["spec"]["priority"] == 5 and greet["spec"]["max_attempts"] == 2
        assert greet["spec"]["tags"] == [{"key": "lang", "value": "py"}]
        assert c.show(ids[2])["attempts"][0]["output"] == {"k": [1, 2, 3]}
        listed = c.list(states=["completed"], tags={"lang": "py"})
        assert [t["id"] for t in listed] == [ids[0]]
        assert c.counts()["completed"] == 3
        assert c.breakdown("lang") == {"py": {"completed": 1}}
        assert c.summary()["workers_connected"] == 2


def test_errors_round_trip_as_exceptions(coordinator):
    with coordinator.client() as c:
        with pytest.raises(TatzelwurmError) as e:
            c.show("abcdef")
        assert e.value.kind == "unknown_id" and "abcdef" in e.value.message
        [tid] = c.add(sleep_task(1))
        c.kill(tid)
        with pytest.raises(TatzelwurmError) as e:
            c.play(tid)
        assert e.value.kind == "invalid_state" and "killed" in e.value.message
        with pytest.raises(TatzelwurmError) as e:
            c.add(exec_task([]))
        assert e.value.kind == "invalid_request"
        assert c.remove(tid) == [tid]
    with pytest.raises(TatzelwurmError) as e:
        from tatzelwurm import Client
        Client(coordinator.addr, token="wrong")
    assert e.value.kind == "bad_token"


def test_a_large_add_goes_in_several_requests(coordinator):
    from tatzelwurm import MAX_ADD_TASKS, PartlyAdded
    with coordinator.client() as c:
        n = MAX_ADD_TASKS + 5
        ids = c.add(*[sleep_task(1) for _ in range(n)])
        assert len(set(ids)) == n
        assert c.counts()["created"] == n
        # One request beyond the limit is refused whole.
        with pytest.raises(TatzelwurmError) as e:
            c.request({"add": {"tasks": [sleep_task(1)] * (MAX_ADD_TASKS + 1), "play": False}})
        assert e.value.kind == "limit_exceeded" and "nothing was added" in e.value.message
        assert c.counts()["created"] == n
        # A split add whose second request is refused names what the first one added.
        specs = [sleep_task(1) for _ in range(MAX_ADD_TASKS)] + [sleep_task(1, timeout=0)]
        with pytest.raises(PartlyAdded) as e:
            c.add(*specs)
        assert len(e.value.added) == MAX_ADD_TASKS and e.value.total == MAX_ADD_TASKS + 1
        assert e.value.cause.kind == "invalid_request"
        assert c.counts()["created"] == n + MAX_ADD_TASKS
        # Twenty tasks of a megabyte each: more than one frame holds.
        big = sleep_task(1, user_data="x" * (1 << 20))
        assert len(set(c.add(*[big] * 20))) == 20
        assert c.counts()["created"] == n + MAX_ADD_TASKS + 20


def test_kill_reaches_a_python_handler(coordinator):
    coordinator.python_worker("py-3")
    coordinator.wait_workers(1)
    with coordinator.client() as c:
        [tid] = c.add(custom_task("py_async", {"n": 1, "sleep": 60}), play=True)
        deadline = time.time() + 30
        while c.show(tid)["state"] != "running":
            assert time.time() < deadline
            time.sleep(0.05)
        c.kill(tid)
        while c.show(tid)["attempts"][0]["outcome"] is None:
            assert time.time() < deadline
            time.sleep(0.05)
        t = c.show(tid)
        assert t["state"] == "killed" and t["attempts"][0]["outcome"] == "killed"
        # The worker is free again.
        [ok] = c.add(custom_task("py_upper", "x"), play=True)
        assert c.wait(ok) == {ok: "completed"}


def test_killed_python_worker_loses_no_task(coordinator):
    doomed = coordinator.python_worker("py-doomed")
    coordinator.wait_workers(1)
    with coordinator.client() as c:
        ids = c.add(*[custom_task("echo", {"sleep": 30, "i": i}) for i in range(3)], play=True)
        deadline = time.time() + 30
        while any(c.show(i)["state"] != "running" for i in ids):
            assert time.time() < deadline
            time.sleep(0.05)
        doomed.kill()
        doomed.wait()
        # A Rust worker serving `echo` picks them up once the 1 s lease ends.
        coordinator.rust_worker("--type", "async")
        [fast] = c.add(custom_task("echo", {"i": 99}), play=True)
        assert c.wait(fast) == {fast: "completed"}
        states = c.wait(*ids, timeout=120)
        assert states == {i: "completed" for i in ids}
        for i in ids:
            attempts = c.show(i)["attempts"]
            assert attempts[0]["outcome"] == "lost" and attempts[-1]["outcome"] == "succeeded"


def test_async_client(coordinator):
    coordinator.rust_worker("--type", "async")

    async def main():
        async with await AsyncClient.connect(coordinator.addr, token_file=coordinator.token_file) as c:
            [tid] = await c.add(sleep_task(0.01), play=True)
            return await c.wait(tid), tid

    states, tid = asyncio.run(main())
    assert states == {tid: "completed"}


def test_python_worker_reattaches_after_a_coordinator_restart(durable_coordinator):
    c = durable_coordinator
    c.python_worker("py-durable")
    c.wait_workers(1)
    with c.client() as cl:
        [slow] = cl.add(custom_task("py_async", {"n": 5, "sleep": 2.0}), play=True)
        [quick] = cl.add(custom_task("py_async", {"n": 7, "sleep": 0.3}), play=True)
        deadline = time.time() + 30
        while cl.show(slow)["state"] != "running" or cl.show(quick)["state"] != "running":
            assert time.time() < deadline
            time.sleep(0.05)
    c.restart()  # the quick one ends while the coordinator is down
    with c.client() as cl:
        assert cl.wait(slow, quick, timeout=60) == {slow: "completed", quick: "completed"}
        for tid, out in ((slow, {"double": 10}), (quick, {"double": 14})):
            attempts = cl.show(tid)["attempts"]
            assert len(attempts) == 1, "reattached, not run again"
            assert attempts[0]["output"] == out


def test_wait_reads_a_snapshot_that_comes_in_parts(small_frame_coordinator):
    with small_frame_coordinator.client() as c:
        ids = []
        for _ in range(20):
            ids += c.add(*[sleep_task(3600) for _ in range(15)])
        c.kill("all")
        # 300 states in MessagePack do not fit in one 2 KiB frame: the snapshot comes in parts.
        states = c.wait("all", timeout=30)
        assert sorted(states) == sorted(ids)
        assert set(states.values()) == {"killed"}
        with pytest.raises(TatzelwurmError) as e:
            c.list()
        assert e.value.kind == "limit_exceeded"


def test_python_worker_back_after_its_lease_runs_the_tasks_that_waited_once(tmp_path):
    """Issue 13 with the Python worker: frozen past the lease, it reconnects under its old id
    while tasks wait for it; each runs once."""
    import os
    import signal

    from conftest import Coordinator

    c = Coordinator(tmp_path, lease="2s", extra=["--heartbeat", "300ms"])
    try:
        p = c.python_worker("py-frozen")
        c.wait_workers(1)
        os.kill(p.pid, signal.SIGSTOP)
        with c.client() as cl:
            deadline = time.time() + 30
            while cl.workers()[0]["state"] != "lost":
                assert time.time() < deadline
                time.sleep(0.05)
            time.sleep(2.8)
            ids = cl.add(*[custom_task("echo", {"n": i}) for i in range(3)], play=True)
            os.kill(p.pid, signal.SIGCONT)
            assert cl.wait(*ids, timeout=60) == {i: "completed" for i in ids}
            for i in ids:
                assert [a["outcome"] for a in cl.show(i)["attempts"]] == ["succeeded"]
    finally:
        c.stop()


def test_python_worker_that_wakes_to_a_stale_dispatch_hands_it_back_instead_of_running_it(tmp_path):
    """Frozen with a dispatch unread, past the lease: the task went back to the queue meanwhile, so
    on waking the worker hands that dispatch back (it used to run it, and then the next attempt)."""
    import os
    import signal

    from conftest import Coordinator

    c = Coordinator(tmp_path, lease="1s")
    try:
        p = c.python_worker("py-sleepy")
        c.wait_workers(1)
        os.kill(p.pid, signal.SIGSTOP)
        with c.client() as cl:
            (tid,) = cl.add(custom_task("py_upper", "x"), play=True)
            deadline = time.time() + 30
            while not cl.show(tid)["attempts"] or cl.show(tid)["attempts"][0]["outcome"] != "lost":
                assert time.time() < deadline
                time.sleep(0.05)
            time.sleep(0.5)
            os.kill(p.pid, signal.SIGCONT)
            assert cl.wait(tid, timeout=60) == {tid: "completed"}
            time.sleep(0.5)  # the time a stale run would need to report
            attempts = cl.show(tid)["attempts"]
            assert [a["outcome"] for a in attempts] == ["lost", "succeeded"], attempts
            late = [r["outcome"] for r in attempts[0]["late_reports"]]
            assert late in ([], ["handed_back"]), f"the stale attempt ran: {late}"
        with open(os.path.join(c.dir, "py-sleepy.log")) as f:
            assert "handed back, not started" in f.read()
    finally:
        c.stop()


def test_python_worker_hands_back_a_dispatch_whose_start_comes_after_a_silence_past_the_lease():
    """A dispatch read in time whose turn came after a silence longer than the lease (the worker
    was frozen between reading its frame and starting it) is handed back, not started; within
    the lease it runs. Over a real socket pair, the worker's own event handling, no coordinator."""
    import socket
    import threading

    from tatzelwurm.protocol import encode_data, recv_frame, variant
    from tatzelwurm.worker import Worker

    ran = threading.Event()
    w = Worker(token="unused")

    @w.handler("mark")
    def mark(data, task):
        ran.set()

    ours, coordinator_end = socket.socketpair()
    try:
        w._lease = 0.2

        def dispatch():
            body = {
                "attempt": {"task": uuid.uuid4().bytes, "attempt": 1},
                "payload": {"custom": {"handler": "mark", "data": encode_data(None)}},
            }
            # Read in time (the burst is not marked), handled now.
            assert w._handle_event(ours, "msg", (1, {"dispatch": body}, False), 1)
            return variant(recv_frame(coordinator_end))

        w._heard = time.monotonic() - 0.5
        name, body = dispatch()
        assert name == "finished", (name, body)
        assert body["report"]["outcome"] == "handed_back", body
        assert "longer than the lease" in body["report"]["error"]
        time.sleep(0.1)
        assert not ran.is_set(), "the handler must not run"

        w._heard = time.monotonic()
        name, body = dispatch()
        assert name == "started", (name, body)
        assert ran.wait(5), "within the lease the handler runs"
    finally:
        ours.close()
        coordinator_end.close()


def test_queues_from_python_limit_pause_move_and_defaults(coordinator):
    coordinator.rust_worker("--slots", "8")
    coordinator.wait_workers(1)
    with coordinator.client() as c:
        q = c.queue_set("py", limit=1, weight=2, max_attempts=2)
        assert (q["name"], q["limit"], q["weight"], q["max_attempts"]) == ("py", 1, 2, 2)
        ids = c.add(*[sleep_task(0.1, queue="py") for _ in range(3)], play=True)
        assert set(c.wait(*ids).values()) == {"completed"}
        spans = sorted((a["started_ms"], a["ended_ms"]) for i in ids for a in c.show(i)["attempts"])
        assert all(later[0] >= earlier[1] for earlier, later in zip(spans, spans[1:])), spans
        assert c.show(ids[0])["spec"]["max_attempts"] == 2, "the queue's default"
        assert c.queue("py")["counts"]["completed"] == 3
        c.queue_pause("py")
        (held,) = c.add(sleep_task(0.01, queue="py"), play=True)
        time.sleep(0.3)
        shown = c.show(held)
        assert shown["state"] == "ready"
        assert shown["waiting"] == "queue py is paused (`queue play py`)"
        assert c.move(held, queue="other") == [held]
        assert c.wait(held) == {held: "completed"}
        assert [t["queue"] for t in c.list(queue="other")] == ["other"]
        assert {"py", "other"} <= {q["name"] for q in c.queues()}
        with pytest.raises(TatzelwurmError) as e:
            c.queue_set("py", weight=0)
        assert e.value.kind == "invalid_request"


def test_bulk_changes_take_a_filter(coordinator):
    from tatzelwurm import tasks_where
    with coordinator.client() as c:
        ones = c.add(*[sleep_task(3600, tags={"run": "1"}) for _ in range(2)])
        (two,) = c.add(sleep_task(3600, tags={"run": "2"}, queue="q"))
        assert sorted(c.kill(tasks_where(tags={"run": "1"}))) == sorted(ones)
        assert c.pause(tasks_where(queue="q")) == [two]
        assert c.play(tasks_where(states=["paused"])) == [two]
        assert sorted(c.remove(tasks_where(states=["killed"]))) == sorted(ones)
        assert [t["id"] for t in c.list()] == [two]


def test_client_worker_and_communicator_reach_the_coordinator_through_its_unix_socket(tmp_path):
    sock = tmp_path / "tw.sock"
    c = Coordinator(tmp_path, extra=["--socket", str(sock)])
    try:
        # Every helper below (workers, clients, actionwurm) now goes through the socket.
        c.addr = f"unix:{sock}"
        c.python_worker("py-unix")
        c.wait_workers(1)
        with c.client() as client:
            [tid] = client.add(custom_task("py_upper", "over a socket"), play=True)
            assert client.wait(tid) == {tid: "completed"}
            assert client.show(tid)["attempts"][0]["output"] == "OVER A SOCKET"
        pytest.importorskip("kiwipy")
        from tatzelwurm.kiwipy import TatzelwurmCommunicator

        comm = TatzelwurmCommunicator(c.addr, token_file=c.token_file, namespace="unix")
        try:
            comm.add_rpc_subscriber(lambda _comm, msg: msg * 2, "doubler")
            assert comm.rpc_send("doubler", 21).result(timeout=20) == 42
        finally:
            comm.close()
        with open(os.path.join(c.dir, "coordinator.log")) as f:
            assert "peer=unix pid" in f.read()
    finally:
        c.stop()
