"""A worker for `custom` tasks: register handlers (plain functions or coroutines) and run().

One thread owns the connection and every send; a reader thread, the task threads, an asyncio loop
for coroutine handlers and the timers only put events on its queue. Reports are kept until the
coordinator acknowledges them and resent after every reconnect, as docs/PROTOCOL.md §4 and §6 ask.
"""

import asyncio
import inspect
import logging
import os
import queue
import select
import socket
import threading
import time
import traceback
import uuid

from .protocol import (
    DEFAULT_ADDR,
    ProtocolError,
    TatzelwurmError,
    connect,
    decode_data,
    encode_data,
    read_token,
    recv_frame,
    send_frame,
    tags_list,
    variant,
)

log = logging.getLogger("tatzelwurm.worker")


class Result:
    """What a handler may return to set the task's user data as well as its output."""

    def __init__(self, output=None, user_data=None):
        self.output = output
        self.user_data = user_data


class Task:
    """What a handler is told about the task it runs."""

    def __init__(self, dispatch):
        self.id = uuid.UUID(bytes=dispatch["attempt"]["task"])
        self.attempt = dispatch["attempt"]["attempt"]
        self.name = dispatch.get("name")
        self.user_key = dispatch.get("user_key")
        self.user_data = decode_data(dispatch.get("user_data"))


def _now_ms():
    return int(time.time() * 1000)


class Worker:
    """A worker serving custom handlers. `block` is "sync" or "async" (which tasks it takes)."""

    def __init__(self, addr=DEFAULT_ADDR, token_file=None, token=None, block="async", slots=16,
                 name=None, tags=None):
        self.addr = addr
        self.token = token if token is not None else read_token(token_file)
        self.block = block
        self.slots = int(slots)
        self.name = name or f"{socket.gethostname()}-py-{os.getpid()}"
        self.tags = tags_list(tags)
        self.handlers = {}
        self.worker_id = None
        self._events = queue.Queue()
        self._running = {}   # (task bytes, attempt) -> cancel function
        self._unacked = {}   # (task bytes, attempt) -> report
        self._finished = set()
        self._stopping = threading.Event()
        self._loop = None
        # When the coordinator was last heard (monotonic seconds) and the lease it grants: a
        # dispatch is handed back, not started, when the silence passed the lease before it could
        # start (frozen after its frame was read, say), as well as when it was read after one.
        self._heard = time.monotonic()
        self._lease = 30.0

    def handler(self, name):
        """Decorator: `@worker.handler("render")` above `def f(data, task)` or `async def f(data, task)`."""

        def register(fn):
            self.handlers[name] = fn
            return fn

        return register

    def stop(self):
        """Stops after the current step; running tasks are handed back."""
        self._stopping.set()
        self._events.put(("stop", None))

    # ---- running tasks ----------------------------------------------------------------------

    def _async_loop(self):
        if self._loop is None:
            self._loop = asyncio.new_event_loop()
            threading.Thread(target=self._loop.run_forever, daemon=True, name="tatzelwurm-async").start()
        return self._loop

    def _finish(self, key, outcome, *, output=None, user_data=None, error=None, started=None):
        self._events.put(("done", (key, {
            "outcome": outcome,
            "exit_code": None,
            "error": error,
            "stdout_tail": "",
            "stderr_tail": "",
            "output": encode_data(output),
            "user_data": None if user_data is None else encode_data(user_data),
            "started_ms": started,
            "ended_ms": _now_ms(),
        })))

    def _start(self, d):
        key = (d["attempt"]["task"], d["attempt"]["attempt"])
        name, payload = variant(d["payload"])
        started = _now_ms()
        if name != "custom" or payload["handler"] not in self.handlers:
            self._finish(key, "failed", error=f"this worker does not serve {name} {payload.get('handler', '')}".strip(), started=started)
            return
        fn = self.handlers[payload["handler"]]
        data = decode_data(payload.get("data"))
        task = Task(d)

        def settle(value=None, exc=None):
            if exc is not None:
                self._finish(key, "failed", error=f"{type(exc).__name__}: {exc}", started=started)
            elif isinstance(value, Result):
                self._finish(key, "succeeded", output=value.output, user_data=value.user_data, started=started)
            else:
                self._finish(key, "succeeded", output=value, started=started)

        if inspect.iscoroutinefunction(fn):
            fut = asyncio.run_coroutine_threadsafe(fn(data, task), self._async_loop())

            def done(f):
                if f.cancelled():
                    return
                exc = f.exception()
                settle(None if exc else f.result(), exc)

            fut.add_done_callback(done)
            self._running[key] = fut.cancel
        else:
            def body():
                try:
                    value = fn(data, task)
                except Exception as e:  # a raised exception fails the attempt with its message
                    log.debug("handler failed: %s", traceback.format_exc())
                    settle(exc=e)
                else:
                    settle(value)

            threading.Thread(target=body, daemon=True, name=f"task-{task.id}").start()
            self._running[key] = lambda: None  # a thread cannot be stopped; its result is ignored
        timeout = d.get("timeout_ms")
        if timeout:
            t = threading.Timer(timeout / 1000, lambda: self._events.put(("timeout", key)))
            t.daemon = True
            t.start()

    def _stop_task(self, key, outcome, why):
        cancel = self._running.get(key)
        if cancel is None:
            return
        cancel()
        self._finish(key, outcome, error=why)

    # ---- the connection ---------------------------------------------------------------------

    def _reader(self, sock, generation, lease, hello_at):
        """Reads frames in bursts: a frame and whatever is already waiting behind it. A burst that
        follows a silence longer than the lease (this process was frozen, or cut off; counted from
        the hello, however late the welcome was read), or that holds the coordinator's goodbye,
        is marked: its dispatches were given away meanwhile (docs/PROTOCOL.md §6, leases)."""
        last = hello_at
        try:
            while True:
                burst = [recv_frame(sock)]
                now = time.monotonic()
                silent = now - last > lease
                ended = None
                try:
                    while select.select([sock], [], [], 0)[0]:
                        burst.append(recv_frame(sock))
                except (ProtocolError, OSError, ValueError) as e:
                    ended = str(e)
                last = time.monotonic()
                self._heard = last
                given_away = silent or ended is not None or any(variant(m)[0] == "shutdown" for m in burst)
                for m in burst:
                    self._events.put(("msg", (generation, m, given_away)))
                if ended is not None:
                    self._events.put(("closed", (generation, ended)))
                    return
        except (ProtocolError, OSError, ValueError) as e:
            self._events.put(("closed", (generation, str(e))))

    def _report(self, sock, key, report):
        if key in self._finished:
            return  # ended already (killed, timed out): a later result is ignored
        self._finished.add(key)
        self._running.pop(key, None)
        self._unacked[key] = report
        if sock is not None:
            send_frame(sock, {"finished": {"attempt": {"task": key[0], "attempt": key[1]}, "report": report}})

    def run(self):
        """Connects and serves until stop(); reconnects with backoff when the connection drops."""
        backoff = 0.1
        generation = 0
        while not self._stopping.is_set():
            role = {"worker": {
                "block": self.block, "slots": self.slots, "name": self.name, "host": socket.gethostname(),
                "tags": self.tags, "handlers": sorted(self.handlers), "previous_id": self.worker_id,
                # Handlers only: the coordinator keeps commands and sleeps for other workers.
                "custom_only": True,
            }}
            hello_at = time.monotonic()
            try:
                sock, welcome = connect(self.addr, role, self.token)
            except TatzelwurmError as e:
                if e.kind in ("bad_token", "version_mismatch"):
                    raise
                log.warning("refused: %s; retrying", e)
                sock = None
            except (ConnectionError, ProtocolError, OSError) as e:
                log.warning("cannot connect: %s; retrying in %.1fs", e, backoff)
                sock = None
            if sock is None:
                self._drain_events(None, time.monotonic() + backoff, generation)
                backoff = min(backoff * 2, 2.0)
                continue
            backoff = 0.1
            generation += 1
            had_id = self.worker_id is not None
            self.worker_id = welcome["peer_id"]
            heartbeat = max(welcome["heartbeat_ms"], 10) / 1000
            claims = [{"task": k[0], "attempt": k[1]} for k in list(self._running) + list(self._unacked)]
            if claims or had_id:
                send_frame(sock, {"reattach": {"running": claims}})
            for key, report in self._unacked.items():
                send_frame(sock, {"finished": {"attempt": {"task": key[0], "attempt": key[1]}, "report": report}})
            lease = max(welcome["lease_ms"], 1) / 1000
            self._lease = lease
            self._heard = hello_at
            threading.Thread(target=self._reader, args=(sock, generation, lease, hello_at), daemon=True).start()
            log.info("connected as worker %s", self.worker_id)
            try:
                self._serve(sock, heartbeat, generation)
            except (OSError, ProtocolError) as e:
                log.warning("connection lost: %s", e)
            finally:
                sock.close()
        for key in list(self._running):
            self._stop_task(key, "handed_back", "the worker stopped")

    def _drain_events(self, sock, until, generation):
        while True:
            left = until - time.monotonic()
            if left <= 0:
                return
            try:
                kind, value = self._events.get(timeout=left)
            except queue.Empty:
                return
            if not self._handle_event(sock, kind, value, generation):
                return

    def _serve(self, sock, heartbeat, generation):
        last_heard = time.monotonic()
        next_beat = time.monotonic()
        while not self._stopping.is_set():
            now = time.monotonic()
            if now >= next_beat:
                if now - last_heard > 4 * heartbeat + 2:
                    raise ProtocolError("no word from the coordinator")
                send_frame(sock, {"heartbeat": {"running": len(self._running)}})
                next_beat = now + heartbeat
            try:
                kind, value = self._events.get(timeout=max(0.0, next_beat - time.monotonic()))
            except queue.Empty:
                continue
            if kind == "msg" and value[0] == generation:
                last_heard = time.monotonic()
            if not self._handle_event(sock, kind, value, generation):
                return

    def _handle_event(self, sock, kind, value, generation):
        """Applies one event; False when the connection is over."""
        if kind == "stop":
            return False
        if kind == "done":
            key, report = value
            if sock is not None or key not in self._finished:
                self._report(sock, key, report)
            return True
        if kind == "timeout":
            self._stop_task(value, "timed_out", "timed out")
            return True
        if kind == "closed":
            return value[0] != generation
        if kind != "msg" or sock is None:
            return True
        gen, msg, given_away = value
        if gen != generation:
            return True
        name, body = variant(msg)
        if name == "dispatch":
            key = (body["attempt"]["task"], body["attempt"]["attempt"])
            if key in self._running or key in self._unacked:
                return True
            if given_away or time.monotonic() - self._heard > self._lease:
                # Read after a silence longer than the lease, or beside the goodbye, or such a
                # silence fell between its read and now: the task went to another worker
                # meanwhile, and starting it would run it twice.
                log.warning("a dispatch read after a silence longer than the lease; handed back, not started")
                self._report(sock, key, {
                    "outcome": "handed_back",
                    "error": "the worker heard nothing from the coordinator for longer than the lease before this dispatch",
                    "ended_ms": _now_ms(),
                })
                return True
            self._start(body)
            send_frame(sock, {"started": {"attempt": body["attempt"], "at_ms": _now_ms()}})
        elif name == "kill":
            key = (body["attempt"]["task"], body["attempt"]["attempt"])
            self._stop_task(key, "killed", "killed on request")
        elif name == "ack":
            self._unacked.pop((body["attempt"]["task"], body["attempt"]["attempt"]), None)
        elif name == "reattached":
            for a in body["drop"]:
                key = (a["task"], a["attempt"])
                if key in self._running:
                    self._finished.add(key)
                    self._running.pop(key)()
        elif name == "shutdown":
            return False
        elif name == "error":
            log.warning("the coordinator refused a message: %s", body)
        return True
