"""A kiwipy task subscriber for the fault campaign (`tatzelwurm-chaos --kiwipy-subscribers N`):
python3 kiwipy_subscriber.py ADDR TOKEN_FILE NAME SLOTS.

It serves the message queue `chaos.tasks` of the default namespace through the package's
`TatzelwurmCommunicator`, as an AiiDA daemon worker serves its launch queue: at most SLOTS tasks
held at once, each body [HISTORY, MS], the work done on a thread of its own while the subscriber
has returned a future (as plumpy does). The work does what the campaign's `run-task` does for
commands: appends its start to the history, waits MS milliseconds, appends its end, and answers
`nonce N`. When the coordinator says that tasks held here went to another subscriber while this
process was silent past the lease (`on_tasks_lost`), their work stops before its end, as
`workwurm` kills the command of an attempt its `reattached` drops."""

import concurrent.futures
import logging
import os
import random
import sys
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "clients", "python"))

from tatzelwurm.kiwipy import TatzelwurmCommunicator  # noqa: E402

addr, token_file, name, slots = sys.argv[1:5]
logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(message)s")
log = logging.getLogger("chaos-kiwipy")

lock = threading.Lock()
working = {}  # body as a tuple -> the stop event of its work


def work(history, ms, task_id, attempt, stop, future):
    nonce = random.getrandbits(63)

    def append(kind):
        # One write of a short line: appends of several processes never interleave within it.
        with open(history, "a") as f:
            f.write(f"{kind} {task_id} {attempt} {os.getpid()} {nonce} {time.monotonic_ns()}\n")

    append("start")
    if stop.wait(ms / 1000):
        log.info("task %s attempt %d stopped before its end: it went to another subscriber", task_id, attempt)
        return
    append("end")
    future.set_result(f"nonce {nonce}")


def run(comm, body):
    history, ms, key = body
    task_id, attempt = comm.current_task()
    stop = threading.Event()
    with lock:
        working[key] = stop
    future = concurrent.futures.Future()
    future.add_done_callback(lambda _: forget(key))
    threading.Thread(target=work, args=(history, ms, task_id, attempt, stop, future), daemon=True).start()
    return future


def forget(key):
    with lock:
        return working.pop(key, None)


def lost(bodies):
    for _, _, key in bodies:
        stop = forget(key)
        if stop is not None:
            stop.set()


comm = TatzelwurmCommunicator(addr, token_file=token_file, name=name, task_queue="chaos.tasks",
                              task_prefetch_count=int(slots), on_tasks_lost=lost, connect_timeout=3600)
comm.add_task_subscriber(run)
log.info("serving chaos.tasks")
threading.Event().wait()
