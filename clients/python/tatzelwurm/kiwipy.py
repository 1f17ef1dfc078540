"""A kiwipy `Communicator` on tatzelwurm: task queues with results, RPC and broadcasts.

    from tatzelwurm.kiwipy import TatzelwurmCommunicator
    with TatzelwurmCommunicator("127.0.0.1:5677", namespace="my-profile") as comm:
        comm.add_task_subscriber(lambda comm, task: task * 2)
        assert comm.task_send(21).result() == 42

It speaks the `client` role of docs/PROTOCOL.md on one connection. Threads: a reader thread turns
frames into actions; a supervisor thread heartbeats, notices a dead connection and reconnects;
subscribers run one at a time on a callback thread, so a subscriber that blocks for minutes delays
other callbacks but never the heartbeats: the coordinator keeps this client's tasks however long
they take (there is no consumer timeout, only the lease of a silent connection).

After a reconnect the communicator presents its previous id, reattaches the tasks it holds, resends
unacknowledged answers, serves its queues, registers its RPC identifiers and listens again, and
asks for the outcomes of the tasks it sent whose futures are still open. RPC calls in flight when
the connection broke fail with `DeliveryFailed`.
"""

import concurrent.futures
import contextlib
import itertools
import logging
import os
import queue as queue_mod
import socket
import struct
import threading
import time
import traceback
import uuid

import kiwipy

from .protocol import (
    DEFAULT_ADDR,
    MAX_FRAME,
    ProtocolError,
    TatzelwurmError,
    connect,
    id_text,
    pack,
    read_token,
    send_frame,
    unpack,
    variant,
)

__all__ = ["TatzelwurmCommunicator", "TatzelwurmTaskQueue", "IncomingTask", "WaitingTask", "DEFAULT_TASK_QUEUE"]

log = logging.getLogger("tatzelwurm.kiwipy")

DEFAULT_TASK_QUEUE = "kiwipy.tasks"
DEFAULT_PREFETCH = 200

# Task states of an incoming task taken with `next_task`, as kiwipy names them.
TASK_PENDING = "pending"
TASK_PROCESSING = "processing"
TASK_FINISHED = "finished"
TASK_REQUEUED = "requeued"


class _Failed(Exception):
    """An error reply of the coordinator, with its kind."""

    def __init__(self, kind, message):
        super().__init__(message)
        self.kind = kind


def _is_future(value):
    return isinstance(value, concurrent.futures.Future) or (
        hasattr(value, "add_done_callback") and hasattr(value, "result") and hasattr(value, "done")
    )


class _Outcome:
    """Resolves a sender's future from outcomes: pending nests a future as kiwipy does."""

    def __init__(self, future, decode):
        self.current = future
        self.decode = decode

    def feed(self, name, body):
        """Applies one outcome; True when it was final."""
        fut = self.current
        if name == "pending":
            inner = concurrent.futures.Future()
            if not fut.done():
                fut.set_result(inner)
            self.current = inner
            return False
        if fut.done():
            return True
        if name == "value":
            try:
                fut.set_result(self.decode(body))
            except Exception as e:  # an undecodable value is the sender's error to see
                fut.set_exception(kiwipy.RemoteException(f"cannot decode the result: {e}"))
        elif name == "failed":
            fut.set_exception(kiwipy.RemoteException(body))
        else:  # cancelled
            fut.cancel()
        return True


class IncomingTask:
    """A task taken from a queue with `next_task` or by iteration: `body`, `process()`, `requeue()`."""

    def __init__(self, comm, delivery):
        self._comm = comm
        self._delivery = delivery
        self.body = delivery["body"]
        self.no_reply = delivery["no_reply"]
        self._state = TASK_PENDING

    @property
    def state(self):
        return self._state

    def process(self):
        """Returns a future: set its result (or exception) to answer the task."""
        if self._state != TASK_PENDING:
            raise kiwipy.InvalidStateError(f"the task is {self._state}")
        self._state = TASK_PROCESSING
        outcome = concurrent.futures.Future()

        def done(f):
            if f.cancelled():
                self._state = TASK_PENDING
                return
            self._state = TASK_FINISHED
            self._comm._answer(self._delivery, f)

        outcome.add_done_callback(done)
        return outcome

    def requeue(self):
        """Gives the task back to its queue (another subscriber gets it first)."""
        if self._state not in (TASK_PENDING, TASK_PROCESSING):
            raise kiwipy.InvalidStateError(f"the task is {self._state}")
        self._state = TASK_REQUEUED
        self._comm._reject(self._delivery)

    @contextlib.contextmanager
    def processing(self):
        """A context whose future must be done at its end, else the task is requeued."""
        outcome = self.process()
        try:
            yield outcome
        except Exception as e:
            if not outcome.done():
                outcome.set_exception(e)
            raise
        finally:
            if not outcome.done():
                self._state = TASK_PROCESSING
                self.requeue()


class WaitingTask:
    """A task that waits in a queue, seen without taking it (`waiting_tasks`)."""

    def __init__(self, comm, item):
        self._comm = comm
        self.id = uuid.UUID(bytes=item["id"])
        self.body = comm._decode(item["body"])
        self.no_reply = item["no_reply"]

    def remove(self):
        """Takes the task out of its queue; its sender hears that it was cancelled."""
        self._comm._ask({"remove": {"selector": {"ids": [str(self.id)]}}})


class TatzelwurmTaskQueue:
    """A named task queue of the communicator's namespace (kiwipy's `task_queue(name)`)."""

    def __init__(self, comm, name, prefetch_count=DEFAULT_PREFETCH):
        self._comm = comm
        self.name = name
        self.prefetch_count = prefetch_count

    def task_send(self, task, no_reply=False):
        return self._comm._task_send(self.name, task, no_reply)

    def add_task_subscriber(self, subscriber, identifier=None):
        return self._comm._add_task_subscriber(self.name, subscriber, identifier, self.prefetch_count)

    def remove_task_subscriber(self, identifier):
        self._comm._remove_task_subscriber(self.name, identifier)

    @contextlib.contextmanager
    def next_task(self, timeout=5.0, fail=True):
        """The next waiting task, within `timeout` seconds; `kiwipy.QueueEmpty` if none (or None
        when `fail` is false). A task not processed in the context goes back to the queue."""
        delivery = self._comm._pull(self.name, timeout)
        if delivery is None:
            if fail:
                raise kiwipy.QueueEmpty(f"no task in queue {self.name!r} within {timeout} s")
            yield None
            return
        task = IncomingTask(self._comm, delivery)
        try:
            yield task
        finally:
            if task.state == TASK_PENDING:
                task.requeue()

    def __iter__(self):
        """Every waiting task until the queue is empty for a second; unprocessed ones go back."""
        taken = []
        try:
            while True:
                delivery = self._comm._pull(self.name, 1.0)
                if delivery is None:
                    return
                task = IncomingTask(self._comm, delivery)
                taken.append(task)
                yield task
        finally:
            for task in taken:
                if task.state == TASK_PENDING:
                    task.requeue()


class _Queue:
    """This client's side of one queue: push subscribers and pull waiters."""

    def __init__(self, limit):
        self.subscribers = {}  # identifier -> callable, in order of addition
        self.limit = limit
        self.served = False
        self.pullers = 0  # next_task callers waiting for a delivery
        self.pulled = queue_mod.Queue()


class TatzelwurmCommunicator(kiwipy.Communicator):
    """kiwipy's `Communicator` over a tatzelwurm coordinator. Thread-safe; every method but the
    subscribers' callbacks may be called from any thread.

    `addr` is `HOST:PORT` or `unix:PATH`; the token is read from `token_file`, else as the other clients find it
    (`TATZELWURM_TOKEN_FILE`, then the default data dir). `namespace` separates users of one
    coordinator (an AiiDA profile's UUID); `task_queue` names the default queue and
    `task_prefetch_count` how many of its tasks this client holds at once. `encoder` and
    `decoder` turn bodies into bytes or text and back (YAML for AiiDA); by default bodies travel
    as MessagePack values.

    `on_tasks_lost(bodies)` is called, on a thread of its own, with the bodies of tasks this
    client was still working on when the coordinator gave them to another subscriber: this
    process was silent for longer than the lease (frozen, swapped out, cut off), and the
    reconnect's `reattached` says the tasks are no longer its own. Their answers are no longer
    sent, but work the application started for them may still go on here, beside the new
    subscriber's; the callback is where to stop it (AiiDA's daemon worker exits, see
    `tatzelwurm.aiida`). By default the loss is logged as an error.
    """

    def __init__(self, addr=DEFAULT_ADDR, token_file=None, namespace=None, *, token=None, name=None,
                 task_queue=DEFAULT_TASK_QUEUE, task_prefetch_count=DEFAULT_PREFETCH, encoder=None,
                 decoder=None, connect_timeout=10.0, request_timeout=30.0, on_tasks_lost=None):
        self.addr = addr
        self._token = token if token is not None else read_token(token_file)
        self.namespace = namespace or ""
        self.name = name or f"{socket.gethostname()}-kiwipy-{os.getpid()}"
        self._default_queue = task_queue
        self._prefetch = int(task_prefetch_count) or DEFAULT_PREFETCH
        self._encoder = encoder
        self._decoder = decoder
        self._request_timeout = request_timeout
        self._on_tasks_lost = on_tasks_lost
        self._current = None  # (thread, (task id text, attempt)) of the subscriber call under way
        self._lock = threading.RLock()
        self._send_lock = threading.Lock()
        self._sock = None
        self._generation = 0
        self._connected = threading.Event()
        self._closed = False
        self._stop = threading.Event()
        self.worker_id = None
        self._heartbeat = 1.0
        self._last_heard = time.monotonic()
        # The lease the coordinator grants: a task read after a silence longer than this (the
        # process was frozen, or cut off), or whose turn came after one, was given away meanwhile
        # and is handed back instead of run.
        self._lease = 30.0
        self._ids = itertools.count(1)
        self._handlers = {}  # request id -> callable(name, body) -> True when done
        self._queues = {}  # queue name -> _Queue
        self._rpc = {}  # identifier -> subscriber
        self._broadcast = {}  # identifier -> (subscriber, listener key)
        self._listeners = {}  # listener key -> {"subjects", "senders", "request": rid or None}
        self._sent = {}  # task id bytes -> _Outcome (futures of tasks sent, still open)
        self._calls = {}  # request id -> _Outcome of an RPC in flight
        self._running = {}  # (task bytes, attempt) -> delivery held by this client
        self._unacked = {}  # (task bytes, attempt) -> report not yet acknowledged
        self._forget = []  # ids of sent tasks whose final outcome arrived, to remove
        self._unsent = []  # broadcasts sent while the connection was down
        self._callbacks = queue_mod.Queue()
        threading.Thread(target=self._callback_loop, daemon=True, name="tatzelwurm-kiwipy-callbacks").start()
        self._open(deadline=time.monotonic() + connect_timeout)
        threading.Thread(target=self._supervise, daemon=True, name="tatzelwurm-kiwipy-supervisor").start()

    # ---- kiwipy.Communicator ------------------------------------------------------------------

    def is_closed(self):
        return self._closed

    def close(self, flush_timeout=5.0):
        """Waits (up to `flush_timeout` seconds) until the coordinator acknowledged the answers
        sent, gives back the tasks this client still holds, and closes the connection. Idempotent."""
        deadline = time.monotonic() + flush_timeout
        while self._unacked and not self._closed and time.monotonic() < deadline:
            time.sleep(0.01)
        with self._lock:
            if self._closed:
                return
            self._closed = True
            held = list(self._running.values())
        for delivery in held:
            with contextlib.suppress(Exception):
                self._reject(delivery)
        with contextlib.suppress(Exception):
            self._flush_forget()
        self._stop.set()
        self._callbacks.put(None)
        with contextlib.suppress(Exception):
            self._sock.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(Exception):
            self._sock.close()
        with self._lock:
            for out in list(self._sent.values()) + list(self._calls.values()):
                if not out.current.done():
                    out.current.set_exception(kiwipy.CommunicatorClosed("the communicator was closed"))
            self._sent.clear()
            self._calls.clear()

    def add_rpc_subscriber(self, subscriber, identifier=None):
        self._ensure_open()
        identifier = str(identifier) if identifier is not None else uuid.uuid4().hex
        with self._lock:
            if identifier in self._rpc:
                raise kiwipy.DuplicateSubscriberIdentifier(f"RPC identifier '{identifier}'")
            # Known before it is registered, so that a reconnect meanwhile registers it again.
            self._rpc[identifier] = subscriber
        try:
            self._ask({"register": {"identifier": identifier}})
        except Exception as e:
            with self._lock:
                self._rpc.pop(identifier, None)
            if isinstance(e, _Failed) and e.kind == "duplicate_identifier":
                raise kiwipy.DuplicateSubscriberIdentifier(f"RPC identifier '{identifier}': {e}") from None
            raise
        return identifier

    def remove_rpc_subscriber(self, identifier):
        self._ensure_open()
        identifier = str(identifier)
        with self._lock:
            if self._rpc.pop(identifier, None) is None:
                raise ValueError(f"Unknown subscriber '{identifier}'")
        # Not waited for: calls that race it are answered `failed` here, and a connection that
        # breaks meanwhile takes the registration with it.
        self._send_request({"unregister": {"identifier": identifier}}, None)

    def add_task_subscriber(self, subscriber, identifier=None):
        return self._add_task_subscriber(self._default_queue, subscriber, identifier, self._prefetch)

    def remove_task_subscriber(self, identifier):
        self._remove_task_subscriber(self._default_queue, identifier)

    def add_broadcast_subscriber(self, subscriber, identifier=None, subjects=None, senders=None):
        """Adds a broadcast subscriber. `subjects` and `senders` (patterns, `*` for any run) make
        the coordinator filter for it, so unwanted broadcasts never cross the network; a
        `kiwipy.BroadcastFilter` works as usual on top."""
        self._ensure_open()
        identifier = identifier if identifier is not None else uuid.uuid4().hex
        key = (tuple(subjects or ()), tuple(senders or ()))
        with self._lock:
            if identifier in self._broadcast:
                raise kiwipy.DuplicateSubscriberIdentifier(f"Broadcast identifier '{identifier}'")
            self._broadcast[identifier] = (subscriber, key)
            new = key not in self._listeners
            if new:
                self._listeners[key] = {"request": None}
        if new:
            self._listen(key, wait=True)
        return identifier

    def remove_broadcast_subscriber(self, identifier):
        self._ensure_open()
        with self._lock:
            entry = self._broadcast.pop(identifier, None)
            if entry is None:
                raise ValueError(f"Broadcast subscriber '{identifier}' unknown")
            key = entry[1]
            last = not any(k == key for _, k in self._broadcast.values())
            listener = self._listeners.pop(key, None) if last else None
        if listener and listener["request"] is not None:
            with contextlib.suppress(_Failed, ProtocolError, OSError):
                self._ask({"unlisten": {"listener": listener["request"]}})

    def task_send(self, task, no_reply=False):
        return self._task_send(self._default_queue, task, no_reply)

    def task_queue(self, queue_name, prefetch_size=0, prefetch_count=DEFAULT_PREFETCH):
        self._ensure_open()
        return TatzelwurmTaskQueue(self, queue_name, prefetch_count or DEFAULT_PREFETCH)

    def rpc_send(self, recipient_id, msg):
        self._ensure_open()
        future = concurrent.futures.Future()
        outcome = _Outcome(future, self._decode)
        routed = threading.Event()
        failure = []
        box = {}

        def handler(name, body):
            if name == "done":
                routed.set()
                return False
            if name == "error":
                with self._lock:
                    self._calls.pop(box["rid"], None)
                if not routed.is_set():
                    failure.append(body)
                    routed.set()
                elif not outcome.current.done():
                    outcome.current.set_exception(kiwipy.DeliveryFailed(body["message"]))
                return True
            if name == "call_outcome":
                oname, obody = variant(body["outcome"])
                if outcome.feed(oname, obody):
                    with self._lock:
                        self._calls.pop(box["rid"], None)
                    return True
            return False

        def register(r):
            box["rid"] = r
            self._calls[r] = outcome

        self._send_request({"call": {"identifier": str(recipient_id), "body": self._encode(msg)}}, handler,
                           register=register)
        if not routed.wait(self._request_timeout):
            raise kiwipy.DeliveryFailed(f"no answer from the coordinator routing an RPC to {recipient_id!r}")
        if failure:
            kind, message = failure[0]["kind"], failure[0]["message"]
            if kind == "unroutable":
                raise kiwipy.UnroutableError(message)
            raise kiwipy.DeliveryFailed(f"{message} ({kind})")
        return future

    def broadcast_send(self, body, sender=None, subject=None, correlation_id=None):
        self._ensure_open()
        message = {
            "body": self._encode(body),
            "sender": None if sender is None else str(sender),
            "subject": None if subject is None else str(subject),
            "correlation_id": None if correlation_id is None else str(correlation_id),
        }
        # Sent without waiting for the count of listeners (a broadcast is stored nowhere and
        # promised to nobody); one sent while the connection is down goes after the reconnect.
        try:
            self._send({"request": {"request": next(self._ids), "body": {"broadcast": {"message": message}}}})
        except (ProtocolError, OSError):
            with self._lock:
                self._unsent.append(message)
        return True

    def current_task(self):
        """`(task id, attempt)` of the task whose subscriber is being called, on the thread that
        calls it (None elsewhere, and after the call returns): for logs, and for an application
        that records which attempt did its work. kiwipy passes subscribers the body only."""
        current = self._current
        return current[1] if current is not None and threading.get_ident() == current[0] else None

    def waiting_tasks(self, queue_name=None, limit=None):
        """The tasks waiting in a queue (the default one unless named), oldest first, without
        taking them: what `verdi process repair` inspects."""
        self._ensure_open()
        _, body = self._ask({"queue_tasks": {"queue": queue_name or self._default_queue, "limit": limit}})
        return [WaitingTask(self, item) for item in body["tasks"]]

    # ---- queues -------------------------------------------------------------------------------

    def _task_send(self, queue_name, task, no_reply):
        self._ensure_open()
        future = None if no_reply else concurrent.futures.Future()
        sent = threading.Event()
        result = {}

        def handler(name, body):
            if name == "sent":
                result["id"] = body["id"]
                if future is not None:
                    with self._lock:
                        self._sent[body["id"]] = _Outcome(future, self._decode)
                sent.set()
                return no_reply
            if name == "error":
                result["error"] = body
                sent.set()
                return True
            if name == "task_outcome":
                return self._task_outcome(body)
            return False

        self._send_request({"send": {"queue": queue_name, "body": self._encode(task), "no_reply": bool(no_reply)}},
                           handler)
        if not sent.wait(self._request_timeout):
            raise kiwipy.DeliveryFailed(f"the coordinator did not confirm the task within {self._request_timeout} s")
        if "error" in result:
            raise kiwipy.DeliveryFailed(f"{result['error']['message']} ({result['error']['kind']})")
        return future

    def _task_outcome(self, body):
        """An outcome of a task this client sent; True when final."""
        tid = body["id"]
        with self._lock:
            outcome = self._sent.get(tid)
        if outcome is None:
            return True
        name, content = variant(body["outcome"])
        if outcome.feed(name, content):
            with self._lock:
                self._sent.pop(tid, None)
                # The outcome is ours: the coordinator may forget the task. Removals go in
                # batches from the supervisor, so that they cost no commit per task.
                self._forget.append(str(uuid.UUID(bytes=tid)))
            return True
        return False

    def _flush_forget(self):
        with self._lock:
            ids, self._forget = self._forget, []
        if not ids:
            return

        def handler(name, body):
            # One of them went already (removed by hand, expired): the others one by one.
            if name == "error" and len(ids) > 1:
                for one in ids:
                    self._send_request({"remove": {"selector": {"ids": [one]}}}, lambda n, b: True)
            return True

        self._send_request({"remove": {"selector": {"ids": ids}}}, handler)

    def _add_task_subscriber(self, queue_name, subscriber, identifier, limit):
        self._ensure_open()
        identifier = identifier if identifier is not None else uuid.uuid4().hex
        with self._lock:
            q = self._queues.setdefault(queue_name, _Queue(limit))
            if identifier in q.subscribers or identifier in self._rpc:
                raise kiwipy.DuplicateSubscriberIdentifier(f"Task identifier '{identifier}'")
            q.subscribers[identifier] = subscriber
            start = not q.served
            q.served = True
            q.limit = limit
        if start:
            self._ask({"serve": {"queue": queue_name, "limit": int(limit)}})
        return identifier

    def _remove_task_subscriber(self, queue_name, identifier):
        self._ensure_open()
        with self._lock:
            q = self._queues.get(queue_name)
            if q is None or q.subscribers.pop(identifier, None) is None:
                raise ValueError(f"Unknown task subscriber '{identifier}'")
            stop = not q.subscribers and q.pullers == 0
            if stop:
                q.served = False
        if stop:
            with contextlib.suppress(_Failed):
                self._ask({"unserve": {"queue": queue_name}})

    def _pull(self, queue_name, timeout):
        """Takes one waiting task of a queue, or None after `timeout` seconds."""
        self._ensure_open()
        with self._lock:
            q = self._queues.setdefault(queue_name, _Queue(1))
            q.pullers += 1
            start = not q.served
            if start:
                q.served = True
                q.limit = 1
        if start:
            self._ask({"serve": {"queue": queue_name, "limit": 1}})
        try:
            return q.pulled.get(timeout=timeout)
        except queue_mod.Empty:
            return None
        finally:
            with self._lock:
                q.pullers -= 1
                stop = q.pullers == 0 and not q.subscribers and start
                if stop:
                    q.served = False
            if stop:
                with contextlib.suppress(_Failed, ProtocolError, OSError):
                    self._ask({"unserve": {"queue": queue_name}})
                # A delivery that raced the unserve goes back.
                while True:
                    try:
                        self._reject(q.pulled.get_nowait())
                    except queue_mod.Empty:
                        break

    def _deliver(self, dispatch_and_silence):
        """A message task for this client (on the callback thread), and whether its frame was read
        after a silence longer than the lease."""
        dispatch, silent = dispatch_and_silence
        name, payload = variant(dispatch["payload"])
        attempt = dispatch["attempt"]
        key = (attempt["task"], attempt["attempt"])
        if name != "message":
            self._report(key, {"outcome": "failed", "error": f"a kiwipy client runs no {name} task"})
            return
        with self._lock:
            if key in self._running or key in self._unacked:
                return  # a dispatch seen already (resent over a reconnect)
        if silent or time.monotonic() - self._last_heard > self._lease:
            # The coordinator gave the task to another subscriber meanwhile: running it here
            # too would run it twice (docs/PROTOCOL.md §6, leases).
            log.warning("a task read after a silence longer than the lease; handed back, not run")
            self._report(key, {
                "outcome": "handed_back",
                "error": "the client heard nothing from the coordinator for longer than the lease before this task",
            })
            return
        with self._lock:
            delivery = {
                "key": key,
                "attempt": attempt,
                "queue": payload["queue"],
                "body": self._decode(payload["body"]),
                "no_reply": payload.get("no_reply", False),
            }
            self._running[key] = delivery
            q = self._queues.get(payload["queue"])
        if q is not None and q.pullers > 0:
            q.pulled.put(delivery)
            return
        subscribers = list(q.subscribers.values()) if q is not None else []
        for subscriber in subscribers:
            self._current = (threading.get_ident(), (id_text(key[0]), key[1]))
            try:
                result = subscriber(self, delivery["body"])
            except kiwipy.TaskRejected:
                continue
            except Exception as e:  # the subscriber failed: the sender gets RemoteException
                log.debug("task subscriber raised: %s", traceback.format_exc())
                self._report(key, {"outcome": "failed", "error": f"{type(e).__name__}: {e}"})
                return
            finally:
                self._current = None
            if _is_future(result):
                self._send_worker({"started": {"attempt": attempt, "at_ms": int(time.time() * 1000)}})
                self._chain(result, delivery)
            else:
                self._answer_value(delivery, result)
            return
        self._reject(delivery)

    def _chain(self, future, delivery):
        """Answers a task when the future a subscriber returned resolves (to a value, or to another
        future, and so on)."""

        def done(f):
            if f.cancelled():
                self._reject(delivery)
                return
            exc = f.exception()
            if exc is not None:
                self._report(delivery["key"], {"outcome": "failed", "error": f"{type(exc).__name__}: {exc}"})
                return
            value = f.result()
            if _is_future(value):
                self._chain(value, delivery)
            else:
                self._answer_value(delivery, value)

        future.add_done_callback(done)

    def _answer(self, delivery, future):
        """Answers a task from a done future (IncomingTask.process)."""
        exc = future.exception()
        if exc is not None:
            self._report(delivery["key"], {"outcome": "failed", "error": f"{type(exc).__name__}: {exc}"})
        else:
            self._answer_value(delivery, future.result())

    def _answer_value(self, delivery, value):
        try:
            output = self._encode(value)
        except Exception as e:
            self._report(delivery["key"], {"outcome": "failed", "error": f"cannot encode the result: {e}"})
            return
        self._report(delivery["key"], {"outcome": "succeeded", "output": output})

    def _report(self, key, report):
        report = dict(report)
        report.setdefault("ended_ms", int(time.time() * 1000))
        with self._lock:
            self._running.pop(key, None)
            self._unacked[key] = report
        self._send_worker({"finished": {"attempt": {"task": key[0], "attempt": key[1]}, "report": report}})

    def _reject(self, delivery):
        key = delivery["key"]
        with self._lock:
            if self._running.pop(key, None) is None:
                return
        self._send_worker({"reject": {"attempt": delivery["attempt"]}})

    # ---- RPC and broadcasts (callback thread) -------------------------------------------------

    def _on_call(self, body):
        call = body["call"]
        with self._lock:
            subscriber = self._rpc.get(body["identifier"])

        def respond(name, value=None):
            outcome = name if value is None and name == "pending" else {name: value}
            # No reply unless refused (the caller went away): nothing to wait for.
            self._send_request({"respond": {"call": call, "outcome": outcome}}, None)

        if subscriber is None:
            respond("failed", f"no RPC subscriber {body['identifier']!r} here any more")
            return
        try:
            result = subscriber(self, self._decode(body["body"]))
        except Exception as e:
            respond("failed", f"{type(e).__name__}: {e}")
            return

        def settle(value):
            if _is_future(value):
                respond("pending")

                def done(f):
                    if f.cancelled():
                        respond("cancelled", "the RPC was cancelled")
                    elif f.exception() is not None:
                        exc = f.exception()
                        respond("failed", f"{type(exc).__name__}: {exc}")
                    else:
                        settle(f.result())

                value.add_done_callback(done)
            else:
                try:
                    respond("value", self._encode(value))
                except Exception as e:
                    respond("failed", f"cannot encode the result: {e}")

        settle(result)

    def _on_broadcast(self, body):
        message = body["message"]
        listener = body["listener"]
        with self._lock:
            key = next((k for k, v in self._listeners.items() if v["request"] == listener), None)
            subscribers = [s for s, k in self._broadcast.values() if k == key] if key is not None else []
        try:
            decoded = self._decode(message["body"])
        except Exception:
            log.exception("cannot decode a broadcast")
            return
        for subscriber in subscribers:
            try:
                subscriber(self, body=decoded, sender=message.get("sender"), subject=message.get("subject"),
                           correlation_id=message.get("correlation_id"))
            except Exception:
                log.exception("a broadcast subscriber raised")

    def _listen(self, key, wait=False):
        """Starts the coordinator's listener for a filter key; with `wait`, returns once it is in
        place (a broadcast sent after `add_broadcast_subscriber` returns reaches it)."""
        subjects, senders = key
        done = threading.Event()

        def handler(name, body):
            done.set()  # "done", or an error: a reconnect listens again anyway
            return True

        self._send_request({"listen": {"subjects": list(subjects), "senders": list(senders)}}, handler,
                           register=lambda r: self._listeners.get(key, {}).__setitem__("request", r))
        if wait and not done.wait(self._request_timeout):
            raise kiwipy.DeliveryFailed(f"no reply from the coordinator within {self._request_timeout} s")

    # ---- the connection -----------------------------------------------------------------------

    def _encode(self, value):
        return pack(self._encoder(value) if self._encoder else value)

    def _decode(self, raw):
        value = unpack(raw) if raw else None
        return self._decoder(value) if self._decoder else value

    def _ensure_open(self):
        if self._closed:
            raise kiwipy.CommunicatorClosed("the communicator is closed")

    def _send(self, obj):
        with self._send_lock:
            sock = self._sock
            if sock is None:
                raise ProtocolError("not connected")
            send_frame(sock, obj)

    def _send_worker(self, msg):
        with contextlib.suppress(ProtocolError, OSError):
            self._send({"worker": msg})

    def _send_request(self, body, handler, register=None):
        """Sends a request whose replies go to `handler(name, content)` (True: no more)."""
        with self._lock:
            rid = next(self._ids)
            if handler is not None:
                self._handlers[rid] = handler
            if register is not None:
                register(rid)
        try:
            self._send({"request": {"request": rid, "body": body}})
        except (ProtocolError, OSError):
            # Sent again by the reconnect where that makes sense (serve, register, listen,
            # watch); a plain request fails with the connection.
            pass
        return rid

    def _ask(self, body):
        """Sends a request and waits for its first reply; an error raises `_Failed`. A request
        that the connection took down with it is sent again once the communicator has reconnected
        (within the request timeout): every request sent this way is safe to repeat (a broadcast
        may then reach a listener twice), so that a coordinator's restart is a pause, not an error
        for the application."""
        deadline = time.monotonic() + self._request_timeout
        while True:
            done = threading.Event()
            answer = []

            def handler(name, content, answer=answer, done=done):
                answer.append((name, content))
                done.set()
                return True

            rid = self._send_request(body, handler)
            if not done.wait(max(0.0, deadline - time.monotonic())):
                with self._lock:
                    self._handlers.pop(rid, None)
                raise kiwipy.DeliveryFailed(f"no reply from the coordinator within {self._request_timeout} s")
            name, content = answer[0]
            if name == "error" and content["kind"] == "delivery_failed":
                if self._closed or not self._connected.wait(max(0.0, deadline - time.monotonic())):
                    raise kiwipy.DeliveryFailed(content["message"])
                continue
            if name == "error":
                raise _Failed(content["kind"], content["message"])
            return name, content

    def _open(self, deadline):
        """Connects (again), retrying until `deadline`; then restores what lives with a connection."""
        backoff = 0.05
        while True:
            try:
                role = {"client": {"name": self.name, "host": socket.gethostname(), "namespace": self.namespace,
                                   "previous_id": self.worker_id}}
                hello_at = time.monotonic()
                sock, welcome = connect(self.addr, role, self._token)
                break
            except TatzelwurmError as e:
                if e.kind in ("bad_token", "version_mismatch") or time.monotonic() > deadline:
                    raise kiwipy.DeliveryFailed(f"the coordinator at {self.addr} refused: {e}") from e
            except ConnectionError as e:  # says where it tried
                if time.monotonic() > deadline:
                    raise kiwipy.DeliveryFailed(str(e)) from e
            except (ProtocolError, OSError) as e:
                if time.monotonic() > deadline:
                    raise kiwipy.DeliveryFailed(f"cannot reach the coordinator at {self.addr}: {e}") from e
            time.sleep(backoff)
            backoff = min(backoff * 2, 1.0)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        previous = self.worker_id
        # Nothing else may be sent on the new connection before the reattach: a `finished` or a
        # heartbeat from another thread first would make the coordinator read "claims nothing"
        # and give the held tasks away. So the socket is published under the send lock, and the
        # reattach leaves before that lock is let go.
        send_guard = self._send_lock
        send_guard.acquire()
        with self._lock:
            self._generation += 1
            generation = self._generation
            self._sock = sock
            self.worker_id = welcome["peer_id"]
            self._heartbeat = max(welcome["heartbeat_ms"], 10) / 1000
            self._lease = max(welcome["lease_ms"], 1) / 1000
            # The lease runs from the hello: a welcome read long after does not make the silence short.
            self._last_heard = hello_at
            old_handlers, self._handlers = self._handlers, {}
            claims = [{"task": k[0], "attempt": k[1]} for k in list(self._running) + list(self._unacked)]
            unacked = list(self._unacked.items())
            queues = [(n, q.limit) for n, q in self._queues.items() if q.served]
            rpc = list(self._rpc)
            listeners = list(self._listeners)
            watched = list(self._sent)
            calls, self._calls = self._calls, {}
        try:
            # A reconnect under the same id first says what this client still holds.
            if previous is not None and previous == self.worker_id:
                with contextlib.suppress(ProtocolError, OSError):
                    send_frame(sock, {"worker": {"reattach": {"running": claims}}})
                    for key, report in unacked:
                        send_frame(sock, {"worker": {"finished": {
                            "attempt": {"task": key[0], "attempt": key[1]}, "report": report}}})
        finally:
            send_guard.release()
        threading.Thread(target=self._reader, args=(sock, generation), daemon=True,
                         name="tatzelwurm-kiwipy-reader").start()
        if previous is not None and previous != self.worker_id:
            with self._lock:
                lost = list(self._running.values())
                self._running.clear()
                self._unacked.clear()
            self._lose(lost)
        for rid, handler in old_handlers.items():
            if rid in calls:
                out = calls[rid]
                if not out.current.done():
                    out.current.set_exception(kiwipy.DeliveryFailed("the connection broke before the RPC was answered"))
            else:
                with contextlib.suppress(Exception):
                    handler("error", {"kind": "delivery_failed", "message": "the connection broke"})
        self._connected.set()
        if previous is None:
            return
        for name, limit in queues:
            self._send_request({"serve": {"queue": name, "limit": int(limit)}}, lambda n, b: True)
        for identifier in rpc:
            self._send_request({"register": {"identifier": identifier}}, self._lost_identifier(identifier))
        for key in listeners:
            self._listen(key)
        if watched:
            self._send_request({"watch": {"ids": [str(uuid.UUID(bytes=t)) for t in watched]}}, self._watch_handler)
        with self._lock:
            unsent, self._unsent = self._unsent, []
        for message in unsent:
            self._send_request({"broadcast": {"message": message}}, None)

    def _lost_identifier(self, identifier):
        def handler(name, body):
            if name == "error":
                log.error("RPC identifier %r could not be registered again: %s", identifier, body["message"])
            return True

        return handler

    def _watch_handler(self, name, body):
        if name == "task_outcome":
            self._task_outcome(body)
        return False

    def _reader(self, sock, generation):
        # One buffered stream: a frame costs one system call, not two or more.
        stream = sock.makefile("rb", buffering=1 << 16)
        try:
            while True:
                head = stream.read(4)
                if len(head) < 4:
                    raise ProtocolError("connection closed")
                (n,) = struct.unpack(">I", head)
                if n > MAX_FRAME:
                    raise ProtocolError(f"frame of {n} bytes exceeds the maximum of {MAX_FRAME}")
                body = stream.read(n)
                if len(body) < n:
                    raise ProtocolError("connection closed in the middle of a frame")
                now = time.monotonic()
                silent = now - self._last_heard > self._lease
                self._last_heard = now
                self._on_frame(unpack(body), silent)
                if silent:
                    # What else waits on this connection was sent before the coordinator gave up
                    # on it (it closes a connection whose lease ended): reconnect and reattach
                    # rather than trust it.
                    raise ProtocolError(
                        f"nothing heard from the coordinator for longer than the lease ({self._lease:g} s)")
        except (ProtocolError, OSError, ValueError) as e:
            with self._lock:
                if generation == self._generation and not self._closed:
                    log.warning("connection to %s lost: %s", self.addr, e)
                    self._connected.clear()

    def _on_frame(self, msg, silent=False):
        side, body = variant(msg)
        name, content = variant(body)
        if side == "worker":
            if name == "dispatch":
                self._callbacks.put((self._deliver, (content, silent)))
            elif name == "ack":
                a = content["attempt"]
                with self._lock:
                    self._unacked.pop((a["task"], a["attempt"]), None)
            elif name == "reattached":
                with self._lock:
                    lost = [self._running.pop((a["task"], a["attempt"]), None) for a in content["drop"]]
                self._lose([d for d in lost if d is not None])
            elif name == "error":
                log.warning("the coordinator refused a message: %s", content.get("message"))
            elif name == "shutdown":
                raise ProtocolError(f"the coordinator closes the connection: {content['reason']}")
            return
        if name == "reply":
            rid = content["request"]
            rname, rbody = variant(content["body"])
            with self._lock:
                handler = self._handlers.get(rid)
            if handler is not None and handler(rname, rbody):
                with self._lock:
                    self._handlers.pop(rid, None)
        elif name == "call":
            self._callbacks.put((self._on_call, content))
        elif name == "broadcast":
            self._callbacks.put((self._on_broadcast, content))
        elif name == "shutdown":
            raise ProtocolError(f"the coordinator closes the connection: {content['reason']}")

    def _lose(self, deliveries):
        """Tasks held here that the coordinator gave to another subscriber: tells the application
        (`on_tasks_lost`) on a thread of its own, since the callback thread may be busy with one of
        them."""
        if not deliveries:
            return
        for d in deliveries:
            log.error("task %s (attempt %d) was given to another subscriber (this process was silent "
                      "past the lease, or the coordinator no longer knew it); its answer will not be "
                      "sent, but work started for it may still run here", id_text(d["key"][0]), d["key"][1])
        if self._on_tasks_lost is not None:
            bodies = [d["body"] for d in deliveries]
            threading.Thread(target=self._on_tasks_lost, args=(bodies,), daemon=True,
                             name="tatzelwurm-kiwipy-tasks-lost").start()

    def _callback_loop(self):
        while True:
            item = self._callbacks.get()
            if item is None:
                return
            fn, arg = item
            try:
                fn(arg)
            except Exception:
                log.exception("a callback failed")

    def _supervise(self):
        """Heartbeats; reconnects when the connection is lost or the coordinator falls silent."""
        while not self._stop.is_set():
            if not self._connected.is_set():
                with contextlib.suppress(Exception):
                    self._sock.close()
                try:
                    self._open(deadline=time.monotonic() + 3600 * 24 * 365)
                except Exception as e:
                    log.warning("reconnecting to %s failed: %s", self.addr, e)
                    self._stop.wait(1.0)
                continue
            with self._lock:
                running = len(self._running)
            try:
                self._send({"worker": {"heartbeat": {"running": running}}})
                self._flush_forget()
            except (ProtocolError, OSError):
                self._connected.clear()
                continue
            if time.monotonic() - self._last_heard > 4 * self._heartbeat + 2:
                log.warning("no word from the coordinator for %.1f s; reconnecting", time.monotonic() - self._last_heard)
                self._connected.clear()
                continue
            self._stop.wait(self._heartbeat)
