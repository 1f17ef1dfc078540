"""The actioner side: add, play, pause, kill, list, show and wait for tasks."""

import asyncio
import functools
import itertools
import uuid

from .protocol import (
    DEFAULT_ADDR,
    MAX_FRAME,
    ProtocolError,
    TatzelwurmError,
    connect,
    decode_data,
    decode_ids,
    encode_data,
    id_text,
    pack,
    read_token,
    recv_frame,
    send_frame,
    tags_list,
    to_ms,
    variant,
)

FINAL_STATES = ("completed", "failed", "killed")

# The most tasks one add request may carry (docs/PROTOCOL.md); larger adds are split.
MAX_ADD_TASKS = 10_000


def _add_chunks(specs):
    """The specs in requests of at most MAX_ADD_TASKS tasks and about half a frame each, in order;
    always at least one request, so that an empty add is still answered."""
    chunks, current, size = [], [], 0
    for spec in specs:
        n = len(pack(spec))
        if current and (len(current) == MAX_ADD_TASKS or size + n > MAX_FRAME // 2):
            chunks.append(current)
            current, size = [], 0
        current.append(spec)
        size += n
    if current or not chunks:
        chunks.append(current)
    return chunks


class PartlyAdded(TatzelwurmError):
    """An add split over several requests failed after some were added: `added` holds their ids
    (durable), `total` how many were to be added, `cause` the error of the request that failed."""

    def __init__(self, added, total, cause):
        super().__init__(cause.kind, f"added {len(added)} of {total} tasks, then: {cause.message}")
        self.added = added
        self.total = total
        self.cause = cause


def _spec(payload, *, name=None, block="async", priority=0, tags=None, max_attempts=None,
          timeout=None, user_key=None, user_data=None, queue=None, prefer=None, require=None):
    """A TaskSpec. `max_attempts` and `timeout` left as None take the queue's defaults; `prefer`
    and `require` are worker tags (soft and hard affinity)."""
    spec = {
        "name": name,
        "block": block,
        "priority": int(priority),
        "tags": tags_list(tags),
        "payload": payload,
        "max_attempts": int(max_attempts or 0),
        "timeout_ms": to_ms(timeout),
        "user_key": user_key,
        "user_data": encode_data(user_data),
    }
    # Left out when unset (the protocol's defaults), so that specs stay as small as they were.
    if queue is not None:
        spec["queue"] = queue
    if prefer:
        spec["prefer"] = tags_list(prefer)
    if require:
        spec["require"] = tags_list(require)
    return spec


def exec_task(argv, *, env=None, cwd=None, **options):
    """A task that runs a command: argv, extra environment (a dict), working directory."""
    env_list = [{"name": k, "value": str(v)} for k, v in (env or {}).items()]
    return _spec({"exec": {"argv": [str(a) for a in argv], "env": env_list, "cwd": cwd}}, **options)


def sleep_task(seconds, **options):
    """The mock task: sleeps (blocking on sync workers, a timer on async ones)."""
    return _spec({"sleep": {"duration_ms": to_ms(seconds)}}, **options)


def custom_task(handler, data=None, **options):
    """A task for workers serving `handler`; `data` is any MessagePack-able value."""
    return _spec({"custom": {"handler": handler, "data": encode_data(data)}}, **options)


def tasks_where(states=None, tags=None, queue=None, name=None):
    """A selector of the tasks that match every condition given, for play, pause, kill, retry,
    remove and move: `c.kill(tasks_where(tags={"run": "7"}))`. It acts like "all" among them."""
    return {"where": {"states": list(states or []), "tags": tags_list(tags), "queue": queue, "name": name}}


def _selector(ids):
    if ids == "all":
        return "all"
    if len(ids) == 1 and isinstance(ids[0], dict) and "where" in ids[0]:
        return ids[0]
    return {"ids": [id_text(i) for i in ids]}


def _queue(info):
    """A QueueInfo with its settings lifted up and its counts as {state: count}."""
    out = dict(info["settings"])
    out.update({k: v for k, v in info.items() if k != "settings"})
    out["counts"] = {c["state"]: c["count"] for c in info["counts"]}
    return out


def _decode_task(task):
    task = decode_ids(task)
    spec = task.get("spec")
    if spec:
        spec["user_data"] = decode_data(spec.get("user_data"))
        name, body = variant(spec["payload"])
        if name == "custom":
            body["data"] = decode_data(body.get("data"))
    for a in task.get("attempts", []):
        a["output"] = decode_data(a.get("output"))
    return task


class Client:
    """A blocking client. Use it as a context manager or call close()."""

    def __init__(self, addr=DEFAULT_ADDR, token_file=None, token=None, timeout=30.0, namespace=""):
        self.addr = addr
        tok = token if token is not None else read_token(token_file)
        role = {"actioner": {"client": "tatzelwurm-python", "namespace": namespace}}
        self._sock, self.welcome = connect(addr, role, tok)
        self._sock.settimeout(timeout)
        self._ids = itertools.count(1)
        self._events = []

    def close(self):
        self._sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _next(self):
        try:
            return recv_frame(self._sock)
        except OSError as e:
            raise ProtocolError(f"connection to {self.addr} failed: {e}") from e

    def request(self, body):
        """Sends one request and returns its reply as (name, content); errors raise."""
        rid = next(self._ids)
        send_frame(self._sock, {"request": rid, "body": body})
        return self._reply_to(rid)

    def _request_parts(self, body):
        """Sends one request whose reply may come in parts (`more`); returns every part's body."""
        rid = next(self._ids)
        send_frame(self._sock, {"request": rid, "body": body})
        parts = []
        while True:
            _, part = self._reply_to(rid)
            parts.append(part)
            if not part.get("more", False):
                return parts

    def _reply_to(self, rid):
        """The next reply to request `rid`, keeping events that come first; errors raise."""
        while True:
            name, content = variant(self._next())
            if name == "event":
                self._events.append(content["event"])
            elif name == "shutdown":
                raise ProtocolError(f"the coordinator is shutting down: {content['reason']}")
            elif name == "reply" and content["request"] == rid:
                rname, rbody = variant(content["body"])
                if rname == "error":
                    raise TatzelwurmError(rbody["kind"], rbody["message"])
                return rname, rbody

    def add(self, *specs, play=False):
        """Adds tasks (built with exec_task, sleep_task, custom_task); returns their ids, durable.

        More than MAX_ADD_TASKS, or more than half a frame of them, go in several requests, each
        all-or-nothing; if one fails, the PartlyAdded error carries the ids the earlier ones
        added."""
        added = []
        specs = list(specs)
        for chunk in _add_chunks(specs):
            try:
                _, body = self.request({"add": {"tasks": chunk, "play": bool(play)}})
            except TatzelwurmError as e:
                if not added:
                    raise
                raise PartlyAdded(added, len(specs), e) from e
            added.extend(uuid.UUID(bytes=i) for i in body["ids"])
        return added

    def _change(self, op, ids, **fields):
        """`ids` are ids or prefixes, or the single word "all"."""
        body = {"selector": _selector("all" if ids == ("all",) else ids), **fields}
        parts = self._request_parts({op: body})
        return [uuid.UUID(bytes=i) for part in parts for i in part["ids"]]

    def play(self, *ids, created=True):
        """Makes tasks ready; `play("all")` plays every paused task, and every created one unless
        `created=False`."""
        return self._change("play", ids, created=created)

    def pause(self, *ids):
        return self._change("pause", ids)

    def kill(self, *ids):
        return self._change("kill", ids)

    def remove(self, *ids):
        return self._change("remove", ids)

    def retry(self, *ids, attempts=1):
        """Runs failed or killed tasks again with `attempts` more attempts; `retry("all")` takes
        every failed task."""
        return self._change("retry", ids, attempts=attempts)

    def list(self, states=None, tags=None, limit=None, queue=None):
        """Task summaries, newest first; `states` None means every state, `queue` None every queue."""
        _, body = self.request(
            {"list": {"states": list(states or []), "tags": tags_list(tags), "limit": limit, "queue": queue}})
        return decode_ids(body["tasks"])

    def counts(self):
        _, body = self.request({"list": {"states": [], "tags": [], "limit": 0}})
        return {c["state"]: c["count"] for c in body["counts"]}

    def show(self, task_id):
        """One task with every field and attempt; user data and outputs decoded. `waiting` says
        why a ready task does not run, when the coordinator can tell."""
        _, body = self.request({"show": {"id": id_text(task_id)}})
        task = _decode_task(body["task"])
        task["waiting"] = body.get("waiting")
        return task

    def move(self, *ids, queue):
        """Moves tasks that no worker holds to `queue`; `move("all", queue=...)` every such task."""
        return self._change("move", ids, queue=queue)

    def queues(self):
        """The queues of this client's namespace: settings, counts, running now, finished per minute."""
        _, body = self.request("queues")
        return [_queue(q) for q in body["queues"]]

    def queue(self, name):
        """One queue (a queue never named shows its defaults)."""
        _, body = self.request({"queue_show": {"queue": name}})
        return _queue(body["queue"])

    def queue_set(self, name, *, priority=None, weight=None, limit=None, paused=None, max_attempts=None,
                  timeout=None):
        """Changes a queue's settings; None leaves one as it is, `limit=0` removes the limit,
        `max_attempts=0` and `timeout=0` the defaults. Returns the queue once the change is stored."""
        change = {"priority": priority, "weight": weight, "limit": limit, "paused": paused,
                  "max_attempts": max_attempts, "timeout_ms": None if timeout is None else to_ms(timeout)}
        _, body = self.request({"queue_set": {"queue": name, "change": change}})
        return _queue(body["queue"])

    def queue_pause(self, name):
        return self.queue_set(name, paused=True)

    def queue_play(self, name):
        return self.queue_set(name, paused=False)

    def workers(self):
        _, body = self.request("workers")
        return body["workers"]

    def summary(self):
        _, body = self.request("summary")
        body["counts"] = {c["state"]: c["count"] for c in body["counts"]}
        return body

    def breakdown(self, key):
        """Counts per state for each value of the tag `key`: {value: {state: count}}."""
        _, body = self.request({"breakdown": {"key": key}})
        return {v["value"]: {c["state"]: c["count"] for c in v["counts"]} for v in body["values"]}

    def wait(self, *ids, timeout=None):
        """Waits until the tasks end (`wait("all")` for every current task); returns {id: state}."""
        flt = {"ids": [], "tags": [], "all": True} if ids == ("all",) else {"ids": [id_text(i) for i in ids], "tags": [], "all": False}
        # A large snapshot comes in parts; events follow the last one.
        parts = self._request_parts({"subscribe": {"filter": flt}})
        states = {s["id"]: s["state"] for part in parts for s in decode_ids(part["tasks"])}
        self._sock.settimeout(timeout)
        try:
            while any(s not in FINAL_STATES for s in states.values()):
                if self._events:
                    ev = decode_ids(self._events.pop(0))
                else:
                    name, content = variant(self._next())
                    if name != "event":
                        continue
                    ev = decode_ids(content["event"])
                if ev["id"] in states:
                    states[ev["id"]] = ev["state"]
        finally:
            self._sock.settimeout(30.0)
        return states


class AsyncClient:
    """The same client for asyncio code: each call runs the blocking one in a thread."""

    def __init__(self, client):
        self._client = client

    @classmethod
    async def connect(cls, addr=DEFAULT_ADDR, token_file=None, token=None):
        return cls(await asyncio.to_thread(Client, addr, token_file, token))

    def __getattr__(self, name):
        attr = getattr(self._client, name)
        if not callable(attr):
            return attr

        @functools.wraps(attr)
        async def call(*args, **kwargs):
            return await asyncio.to_thread(attr, *args, **kwargs)

        return call

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc):
        self._client.close()
