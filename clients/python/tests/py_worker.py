"""A Python worker process for the tests: python py_worker.py ADDR TOKEN_FILE NAME."""

import asyncio
import logging
import sys
import time

sys.path.insert(0, __import__("os").path.join(__import__("os").path.dirname(__file__), ".."))

from tatzelwurm import Result, Worker  # noqa: E402

logging.basicConfig(level=logging.INFO, stream=sys.stderr)
addr, token_file, name = sys.argv[1], sys.argv[2], sys.argv[3]
w = Worker(addr, token_file=token_file, block="async", slots=8, name=name)


@w.handler("py_upper")
def upper(data, task):
    return Result(output=data.upper(), user_data={"seen": data, "attempt": task.attempt})


@w.handler("py_async")
async def slow_double(data, task):
    await asyncio.sleep(data.get("sleep", 0))
    return {"double": data["n"] * 2}


@w.handler("py_fail")
def fail(data, task):
    raise ValueError(f"bad input {data!r}")


@w.handler("echo")
def echo(data, task):
    if isinstance(data, dict) and "sleep" in data:
        time.sleep(data["sleep"])
    return data


w.run()
