"""docs/PROTOCOL.md taken at its word: a worker and a client written from the document alone, with
nothing but frames and MessagePack, against the real coordinator. Each test checks one behaviour
the document describes."""

import socket
import struct
import time
import uuid

import msgpack
import pytest

from tatzelwurm import custom_task, sleep_task
from tatzelwurm.protocol import PROTOCOL_VERSION, pack, read_token, split_addr, unpack, variant


class Peer:
    """One raw connection: frames out, frames in, nothing else."""

    def __init__(self, addr, token, role, version=PROTOCOL_VERSION):
        host, port = split_addr(addr)
        self.sock = socket.create_connection((host, port), timeout=10)
        self.send({"magic": "tatzelwurm", "version": version, "role": role, "codec": "msgpack", "token": token})
        self.welcome_name, self.welcome = variant(self.recv())

    def send(self, obj):
        body = pack(obj)
        self.sock.sendall(struct.pack(">I", len(body)) + body)

    def recv(self, timeout=10.0):
        self.sock.settimeout(timeout)
        head = self._exact(4)
        (n,) = struct.unpack(">I", head)
        return unpack(self._exact(n))

    def _exact(self, n):
        buf = b""
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise EOFError("closed")
            buf += chunk
        return buf

    def messages(self, seconds):
        """Every message that arrives within `seconds`, heartbeat acks left out."""
        out, until = [], time.monotonic() + seconds
        while (left := until - time.monotonic()) > 0:
            try:
                m = self.recv(timeout=left)
            except (socket.timeout, TimeoutError):
                break
            if m != "heartbeat_ack":
                out.append(m)
        return out

    def until(self, name, timeout=10.0):
        """Reads until a message of variant `name`; returns (its body, what came before it)."""
        before, until = [], time.monotonic() + timeout
        while True:
            m = self.recv(timeout=max(0.01, until - time.monotonic()))
            n, body = variant(m)
            if n == name:
                return body, before
            before.append(m)

    def close(self):
        self.sock.close()


class Actioner(Peer):
    def __init__(self, addr, token):
        super().__init__(addr, token, {"actioner": {}})
        self.next_id = 0
        self.events = []

    def ask(self, body):
        """Sends a request and returns the (name, content) of its reply; events that come
        before it are kept in `events`."""
        self.next_id += 1
        rid = self.next_id
        self.send({"request": rid, "body": body})
        while True:
            m = self.recv()
            name, content = variant(m)
            if name == "reply" and content["request"] == rid:
                return variant(content["body"])
            self.events.append(m)


def worker_role(name, previous_id=None, **extra):
    role = {"block": "async", "slots": 4, "name": name}
    if previous_id is not None:
        role["previous_id"] = previous_id
    role.update(extra)
    return {"worker": role}


def attempt_of(dispatch):
    return dispatch["attempt"]


def finish(peer, attempt, outcome="succeeded"):
    peer.send({"finished": {"attempt": attempt, "report": {"outcome": outcome, "ended_ms": int(time.time() * 1000)}}})


@pytest.fixture
def short_lease(tmp_path):
    from conftest import Coordinator

    c = Coordinator(tmp_path, lease="2s", extra=["--heartbeat", "300ms"])
    c.token = read_token(c.token_file)
    yield c
    c.stop()


@pytest.mark.parametrize("first, away", [("reattach", 2.8), ("heartbeat", 0.0)])
def test_a_worker_back_under_its_old_id_while_a_task_waits_runs_it_once(short_lease, first, away):
    """Issue 13: the dispatch used to come before the reattach was read, which then lost it and
    dispatched the task again. A worker that sends something else first claims nothing."""
    c = short_lease
    old = Peer(c.addr, c.token, worker_role("raw"))
    wid = old.welcome["peer_id"]
    old.close()
    with c.client() as cl:
        # The task is added once the coordinator has seen the worker go: added before, it may be
        # dispatched on the closed connection, and then (rightly) lost when the worker comes back
        # claiming nothing, which is another case than this one.
        deadline = time.time() + 10
        while next(w["state"] for w in cl.workers() if w["id"] == wid) != "lost":
            assert time.time() < deadline, cl.workers()
            time.sleep(0.01)
        (tid,) = cl.add(sleep_task(0.001), play=True)
        # Gone for longer than the lease, as in the report (or not at all); back under its id.
        time.sleep(away)
        w = Peer(c.addr, c.token, worker_role("raw", previous_id=wid))
        assert w.welcome["peer_id"] == wid
        if first == "reattach":
            w.send({"reattach": {"running": []}})
        else:
            w.send({"heartbeat": {"running": 0}})
        reattached, before = w.until("reattached")
        assert all(variant(m)[0] != "dispatch" for m in before), before
        assert reattached == {"keep": [], "drop": []}
        dispatch, _ = w.until("dispatch")
        w.send({"started": {"attempt": attempt_of(dispatch), "at_ms": int(time.time() * 1000)}})
        finish(w, attempt_of(dispatch))
        w.until("ack")
        assert cl.wait(tid) == {tid: "completed"}
        attempts = cl.show(tid)["attempts"]
        assert [a["outcome"] for a in attempts] == ["succeeded"], attempts
        # No second dispatch follows.
        assert all(variant(m)[0] != "dispatch" for m in w.messages(0.5))
        w.close()


def test_optional_fields_and_empty_lists_may_be_left_out(short_lease):
    c = short_lease
    a = Actioner(c.addr, c.token)
    # A worker's hello with only its required keys; an exec task without env and cwd; an add
    # without play; a list without tags and limit; a subscribe with only `all`; a retry without
    # attempts.
    w = Peer(c.addr, c.token, {"worker": {"block": "sync", "slots": 1, "name": "bare"}})
    assert w.welcome_name == "welcome"
    name, added = a.ask({"add": {"tasks": [{"block": "sync", "payload": {"exec": {"argv": ["false"]}}}]}})
    assert name == "added", added
    tid = added["ids"][0]
    name, listed = a.ask({"list": {"states": ["created"]}})
    assert name == "tasks" and [t["id"] for t in listed["tasks"]] == [tid]
    name, listed = a.ask({"list": {}})
    assert name == "tasks" and len(listed["tasks"]) == 1
    name, sub = a.ask({"subscribe": {"filter": {"all": True}}})
    assert name == "subscribed" and sub["tasks"][0]["state"] == "created"
    assert a.ask({"play": {"selector": "all"}})[0] == "changed"
    dispatch, _ = w.until("dispatch")
    assert dispatch["payload"] == {"exec": {"argv": ["false"], "env": [], "cwd": None}}
    w.send({"finished": {"attempt": dispatch["attempt"], "report": {"outcome": "failed"}}})
    w.until("ack")
    name, changed = a.ask({"retry": {"selector": {"ids": [str(uuid.UUID(bytes=tid))]}}})
    assert name == "changed", changed
    name, shown = a.ask({"show": {"id": str(uuid.UUID(bytes=tid))}})
    assert shown["task"]["spec"]["max_attempts"] == 2, "one more attempt by default"
    w.close()
    a.close()


def test_an_error_is_the_body_of_a_reply_and_names_the_id(short_lease):
    a = Actioner(short_lease.addr, short_lease.token)
    name, body = a.ask({"show": {"id": "ffff"}})
    assert name == "error"
    assert body["kind"] == "unknown_id" and "ffff" in body["message"]
    name, body = a.ask({"unsubscribe": {"subscription": 99}})
    assert name == "error" and body["kind"] == "unknown_id"
    a.close()


def test_version_1_is_refused_with_version_mismatch(short_lease):
    p = Peer(short_lease.addr, short_lease.token, {"actioner": {}}, version=1)
    assert p.welcome_name == "rejected"
    assert p.welcome["kind"] == "version_mismatch" and p.welcome["version"] == PROTOCOL_VERSION
    p.close()


def test_kill_ends_the_task_at_once_and_the_attempt_with_the_report(short_lease):
    c = short_lease
    a = Actioner(c.addr, c.token)
    w = Peer(c.addr, c.token, worker_role("raw"))
    name, added = a.ask({"add": {"tasks": [{"block": "async", "payload": {"sleep": {"duration_ms": 60000}}}], "play": True}})
    tid = str(uuid.UUID(bytes=added["ids"][0]))
    dispatch, _ = w.until("dispatch")
    w.send({"started": {"attempt": dispatch["attempt"], "at_ms": int(time.time() * 1000)}})
    assert a.ask({"kill": {"selector": {"ids": [tid]}}})[0] == "changed"
    kill, _ = w.until("kill")
    assert kill["attempt"] == dispatch["attempt"]
    _, shown = a.ask({"show": {"id": tid}})
    assert shown["task"]["state"] == "killed"
    assert shown["task"]["attempts"][0]["outcome"] is None, "the attempt waits for the worker's report"
    # Still on its worker: it cannot be removed yet.
    name, body = a.ask({"remove": {"selector": {"ids": [tid]}}})
    assert name == "error" and body["kind"] == "invalid_state"
    finish(w, dispatch["attempt"], "killed")
    w.until("ack")
    _, shown = a.ask({"show": {"id": tid}})
    assert shown["task"]["attempts"][0]["outcome"] == "killed"
    assert a.ask({"remove": {"selector": {"ids": [tid]}}})[0] == "changed"
    w.close()
    a.close()


def test_reports_of_attempts_never_dispatched_get_an_error_and_an_ack(short_lease):
    w = Peer(short_lease.addr, short_lease.token, worker_role("raw"))
    ghost = {"task": uuid.uuid4().bytes, "attempt": 1}
    w.send({"started": {"attempt": ghost, "at_ms": 1}})
    err, _ = w.until("error")
    assert err["kind"] == "unknown_id"
    finish(w, ghost)
    err, _ = w.until("error")
    assert err["kind"] == "unknown_id"
    ack, _ = w.until("ack")
    assert ack["attempt"] == ghost
    w.close()


def test_worker_states_and_what_they_mean_for_the_tasks(short_lease):
    c = short_lease
    a = Actioner(c.addr, c.token)
    w = Peer(c.addr, c.token, worker_role("raw"))
    wid = w.welcome["peer_id"]

    def state():
        _, body = a.ask("workers")
        return next(x["state"] for x in body["workers"] if x["id"] == wid)

    assert state() == "active"
    _, added = a.ask({"add": {"tasks": [{"block": "async", "payload": {"sleep": {"duration_ms": 60000}}}], "play": True}})
    tid = str(uuid.UUID(bytes=added["ids"][0]))
    w.until("dispatch")
    w.close()
    # Lost at once, but it keeps its task until the lease (2 s) ends.
    deadline = time.time() + 10
    while state() != "lost":
        assert time.time() < deadline
        time.sleep(0.02)
    assert a.ask({"show": {"id": tid}})[1]["task"]["state"] == "assigned"
    deadline = time.time() + 10
    while a.ask({"show": {"id": tid}})[1]["task"]["state"] != "ready":
        assert time.time() < deadline
        time.sleep(0.1)
    attempt = a.ask({"show": {"id": tid}})[1]["task"]["attempts"][0]
    assert attempt["outcome"] == "lost"
    d = Peer(c.addr, c.token, worker_role("drainer"))
    d.until("dispatch")
    d.send("draining")
    deadline = time.time() + 10
    while True:
        _, body = a.ask("workers")
        if next(x["state"] for x in body["workers"] if x["id"] == d.welcome["peer_id"]) == "draining":
            break
        assert time.time() < deadline
        time.sleep(0.02)
    d.close()
    a.close()


def test_a_silent_worker_hears_shutdown_before_its_connection_closes(short_lease):
    w = Peer(short_lease.addr, short_lease.token, worker_role("silent"))
    body, _ = w.until("shutdown", timeout=10)
    assert "no heartbeat" in body["reason"]
    with pytest.raises(EOFError):
        w.recv(timeout=5)
    w.close()


def test_a_worker_with_handlers_also_runs_plain_tasks_and_unserved_handlers_wait(short_lease):
    c = short_lease
    w = Peer(c.addr, c.token, worker_role("handlers", handlers=["render"]))
    with c.client() as cl:
        sleep_id, nobody = cl.add(sleep_task(0.001), custom_task("nobody_serves_this"), play=True)
        dispatch, _ = w.until("dispatch")
        assert uuid.UUID(bytes=dispatch["attempt"]["task"]) == sleep_id
        finish(w, dispatch["attempt"])
        w.until("ack")
        assert all(variant(m)[0] != "dispatch" for m in w.messages(0.5))
        assert cl.show(nobody)["state"] == "ready"
    w.close()


def test_equal_priorities_run_in_the_order_they_became_ready(short_lease):
    c = short_lease
    with c.client() as cl:
        ids = cl.add(*[sleep_task(0.001) for _ in range(5)], play=False)
        # Made ready in reverse order: that order is the order of dispatch.
        for t in reversed(ids):
            cl.play(t)
        (high,) = cl.add(sleep_task(0.001, priority=1), play=True)
        w = Peer(c.addr, c.token, {"worker": {"block": "async", "slots": 1, "name": "one"}})
        order = []
        for _ in range(6):
            d, _ = w.until("dispatch")
            order.append(uuid.UUID(bytes=d["attempt"]["task"]))
            finish(w, d["attempt"])
        assert order == [high] + list(reversed(ids))
        w.close()


def test_subscriptions_take_the_union_of_ids_and_tags_and_unsubscribe_stops_events(short_lease):
    c = short_lease
    a = Actioner(c.addr, c.token)
    with c.client() as cl:
        by_id, by_tag, neither = cl.add(sleep_task(1), sleep_task(1, tags={"k": "v"}), sleep_task(1))
    a.next_id += 1
    sub = a.next_id
    a.send({"request": sub, "body": {"subscribe": {"filter": {"ids": [str(by_id)], "tags": [{"key": "k", "value": "v"}]}}}})
    _, snap = variant(variant(a.recv())[1]["body"])
    assert {uuid.UUID(bytes=t["id"]) for t in snap["tasks"]} == {by_id, by_tag}
    assert a.ask({"play": {"selector": "all"}})[0] == "changed"
    events = [variant(m)[1] for m in a.events + a.messages(0.5) if variant(m)[0] == "event"]
    a.events.clear()
    assert {uuid.UUID(bytes=e["event"]["id"]) for e in events} == {by_id, by_tag}
    assert all(e["subscription"] == sub for e in events)
    # Before any attempt, an event's attempt is 0.
    assert all(e["event"]["attempt"] == 0 and e["event"]["state"] == "ready" for e in events)
    assert a.ask({"unsubscribe": {"subscription": sub}}) == ("unsubscribed", {"subscription": sub})
    assert a.ask({"kill": {"selector": "all"}})[0] == "changed"
    assert [m for m in a.events + a.messages(0.5) if variant(m)[0] == "event"] == []
    assert neither
    a.close()


def test_the_coordinator_ends_an_attempt_whose_worker_ignores_its_timeout(short_lease):
    c = short_lease
    w = Peer(c.addr, c.token, worker_role("stubborn"))
    with c.client() as cl:
        (tid,) = cl.add(sleep_task(60, timeout=0.2), play=True)
        d, _ = w.until("dispatch")
        assert d["timeout_ms"] == 200
        w.send({"started": {"attempt": d["attempt"], "at_ms": int(time.time() * 1000)}})
        # The worker heartbeats but never stops the attempt: after the timeout and a lease of
        # grace the coordinator ends it and tells the worker to kill it.
        deadline = time.monotonic() + 10
        kill = None
        while kill is None:
            assert time.monotonic() < deadline
            w.send({"heartbeat": {"running": 1}})
            for m in w.messages(0.2):
                if variant(m)[0] == "kill":
                    kill = variant(m)[1]
        assert kill["attempt"] == d["attempt"]
        shown = cl.show(tid)
        assert shown["state"] == "failed"
        assert shown["attempts"][0]["outcome"] == "timed_out"
        assert "coordinator" in shown["attempts"][0]["error"]
    w.close()


def test_a_frame_that_cannot_be_read_is_answered_with_shutdown_then_closed(short_lease):
    a = Actioner(short_lease.addr, short_lease.token)
    body = msgpack.packb({"request": 1, "body": {"no_such_request": {}}})
    a.sock.sendall(struct.pack(">I", len(body)) + body)
    name, content = variant(a.recv())
    assert name == "shutdown" and "could not be read" in content["reason"]
    with pytest.raises(EOFError):
        a.recv(timeout=5)
    a.close()



def test_a_followed_command_streams_its_output_by_offset_and_ends_with_followed(short_lease):
    c = short_lease
    a = Actioner(c.addr, c.token)
    w = Peer(c.addr, c.token, worker_role("streamer", streams_output=True))
    _, added = a.ask({"add": {"tasks": [{"block": "async", "payload": {"exec": {"argv": ["true"]}}}], "play": True}})
    tid = str(uuid.UUID(bytes=added["ids"][0]))
    dispatch, _ = w.until("dispatch")
    attempt = dispatch["attempt"]
    w.send({"started": {"attempt": attempt, "at_ms": int(time.time() * 1000)}})
    name, following = a.ask({"follow": {"id": tid}})
    assert name == "following"
    assert following["attempt"] == 1 and following["worker"] == "streamer" and following["streamed"] is True
    order, _ = w.until("follow")
    assert order == {"attempt": attempt, "on": True}

    def piece(stream, offset, data):
        w.send({"output": {"attempt": attempt, "stream": stream, "offset": offset, "data": data}})

    def replies(n):
        """The next n replies to the follow, state updates (`following`) left out: the start
        may reach the coordinator after the follow."""
        out = []
        while len(out) < n:
            kind, body = variant(a.recv())
            assert kind == "reply" and body["request"] == a.next_id
            reply = variant(body["body"])
            if reply[0] != "following":
                out.append(reply)
        return out

    piece("stdout", 0, b"hello ")
    piece("stderr", 0, b"oops\n")
    # The tails again, as after a second `follow`: only what is new comes through.
    piece("stdout", 0, b"hello world\n")
    got = replies(3)
    assert [(n, b.get("stream"), b.get("offset"), b.get("data")) for n, b in got] == [
        ("output", "stdout", 0, b"hello "),
        ("output", "stderr", 0, b"oops\n"),
        ("output", "stdout", 6, b"world\n"),
    ]
    finish(w, attempt)
    w.until("ack")
    [(name, body)] = replies(1)
    assert name == "followed" and body["state"] == "completed" and body["attempt"] == 1
    w.close()
    a.close()
