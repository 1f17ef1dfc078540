"""A kiwipy sender process for the tests: python kiwipy_sender.py ADDR TOKEN_FILE NAMESPACE.

Sends one task, prints `sent`, then prints the task's result once it comes (after any number of
reconnects)."""

import concurrent.futures
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from tatzelwurm.kiwipy import TatzelwurmCommunicator  # noqa: E402

addr, token_file, namespace = sys.argv[1:4]
with TatzelwurmCommunicator(addr, token_file=token_file, namespace=namespace) as comm:
    future = comm.task_send("question")
    print("sent", flush=True)
    value = future.result(timeout=120)
    while isinstance(value, concurrent.futures.Future):
        value = value.result(timeout=120)
    print(value, flush=True)
