"""A kiwipy task subscriber process for the tests: python kiwipy_subscriber.py ADDR TOKEN_FILE
NAMESPACE RAN_FILE.

Appends a line to RAN_FILE for every task it runs and answers `ran`; prints `ready` once
subscribed, then serves until killed."""

import os
import sys
import threading

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from tatzelwurm.kiwipy import TatzelwurmCommunicator  # noqa: E402

addr, token_file, namespace, ran_file = sys.argv[1:5]


def run(comm, task):
    with open(ran_file, "a") as f:
        f.write(f"{task}\n")
    return "ran"


with TatzelwurmCommunicator(addr, token_file=token_file, namespace=namespace) as comm:
    comm.add_task_subscriber(run)
    print("ready", flush=True)
    threading.Event().wait()
