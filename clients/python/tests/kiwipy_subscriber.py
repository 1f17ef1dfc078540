"""A kiwipy task subscriber process for the tests: python kiwipy_subscriber.py ADDR TOKEN_FILE
NAMESPACE RAN_FILE [works].

Appends a line to RAN_FILE for every task it runs and answers `ran`; prints `ready` once
subscribed, then serves until killed. With `works`, a task's work goes on until the process ends
instead (the subscriber returns a future that never resolves), and when the coordinator says
that tasks held here were given to another subscriber (`on_tasks_lost`), the process appends
`lost TASK` lines to RAN_FILE and exits with status 3, as AiiDA's daemon worker does."""

import concurrent.futures
import os
import sys
import threading

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from tatzelwurm.kiwipy import TatzelwurmCommunicator  # noqa: E402

addr, token_file, namespace, ran_file = sys.argv[1:5]
works = sys.argv[5:] == ["works"]


def note(line):
    with open(ran_file, "a") as f:
        f.write(f"{line}\n")


def run(comm, task):
    note(task)
    return concurrent.futures.Future() if works else "ran"


def lost(tasks):
    for task in tasks:
        note(f"lost {task}")
    os._exit(3)


with TatzelwurmCommunicator(addr, token_file=token_file, namespace=namespace,
                            on_tasks_lost=lost if works else None) as comm:
    comm.add_task_subscriber(run)
    print("ready", flush=True)
    threading.Event().wait()
