"""A Python worker for the fault campaign (`tatzelwurm-chaos --python-workers N`):
python3 py_worker.py ADDR TOKEN_FILE NAME SLOTS.

It serves the custom handler `chaos-run`, whose data is [HISTORY, MS], and does what the
campaign's `run-task` does for commands: appends its start to the history, sleeps, appends its
end, and answers `nonce N`. The handler runs in this process (a coroutine, so that a kill cancels
it before its end is written): it stops with the worker and dies with it."""

import asyncio
import logging
import os
import random
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "clients", "python"))

from tatzelwurm import Worker  # noqa: E402

addr, token_file, name, slots = sys.argv[1:5]
logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(message)s")
worker = Worker(addr, token_file=token_file, name=name, slots=int(slots))


@worker.handler("chaos-run")
async def chaos_run(data, task):
    history, ms = data
    nonce = random.getrandbits(63)

    def append(kind):
        # One write of a short line: appends of several processes never interleave within it.
        with open(history, "a") as f:
            f.write(f"{kind} {task.id} {task.attempt} {os.getpid()} {nonce} {time.monotonic_ns()}\n")

    append("start")
    await asyncio.sleep(ms / 1000)
    append("end")
    return f"nonce {nonce}"


worker.run()
