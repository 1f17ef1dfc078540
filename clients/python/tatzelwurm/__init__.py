"""Client and worker for the tatzelwurm task broker (MessagePack protocol, docs/PROTOCOL.md)."""

from .client import (MAX_ADD_TASKS, AsyncClient, Client, PartlyAdded, custom_task, exec_task, sleep_task,
                     tasks_where)
from .protocol import ProtocolError, TatzelwurmError
from .worker import Result, Task, Worker

__all__ = [
    "AsyncClient",
    "Client",
    "MAX_ADD_TASKS",
    "PartlyAdded",
    "ProtocolError",
    "Result",
    "Task",
    "TatzelwurmError",
    "Worker",
    "custom_task",
    "exec_task",
    "sleep_task",
    "tasks_where",
]
