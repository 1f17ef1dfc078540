"""AiiDA's broker on tatzelwurm: the `aiida.brokers` entry point `tatzelwurm`.

A profile whose process controller is `tatzelwurm` gets a `TatzelwurmCommunicator` in a namespace
of its own (its UUID unless configured), with the launch queue AiiDA's daemon workers serve, the
holding limit `daemon.worker_process_slots`, and AiiDA's own serialisation of bodies:

    verdi presto --no-broker
    verdi profile configure-broker tatzelwurm --address 127.0.0.1:5677

See the package's README for the whole setup.
"""

from __future__ import annotations

import functools
import logging
import os
import sys
import time
import typing as t

from aiida.brokers.broker import Broker, BrokerConfigField

from .protocol import DEFAULT_ADDR

__all__ = ("TatzelwurmBroker",)


def leave_lost_processes(bodies) -> None:
    """What a daemon worker does when it learns that process tasks it was running were given to
    another daemon worker: it was silent for longer than the lease (frozen, swapped out, cut off
    from the coordinator), and the other worker has continued those processes from their last
    checkpoints meanwhile. Going on with them here too would run each twice, which is what a
    missed RabbitMQ heartbeat does. The worker exits at once, before its event loop steps them
    again; the daemon's supervisor starts a new one. Every task of a worker whose lease ended was
    given away, so nothing that is still this worker's is lost with it."""
    log = logging.getLogger("tatzelwurm.aiida")
    log.critical("%d process task(s) of this daemon worker (pid %d) were given to another worker while it was "
                 "silent past the lease; exiting so that they run only there", len(bodies), os.getpid())
    for handler in logging.getLogger().handlers + log.handlers:
        handler.flush()
    sys.stderr.flush()
    os._exit(1)


class TatzelwurmBroker(Broker):
    """The message broker of an AiiDA profile, on a tatzelwurm coordinator."""

    _config_fields = (
        BrokerConfigField(
            name="address",
            prompt="Coordinator address",
            help="HOST:PORT of the tatzelwurm coordinator, or unix:PATH for its Unix socket.",
            default=DEFAULT_ADDR,
            param_type="string",
        ),
        BrokerConfigField(
            name="token_file",
            prompt="Token file",
            help="The coordinator's token file (empty: TATZELWURM_TOKEN_FILE, then the default data dir).",
            default="",
            param_type="string",
        ),
        BrokerConfigField(
            name="namespace",
            prompt="Namespace",
            help="Namespace of the profile's queues and messages (empty: the profile's UUID).",
            default="",
            param_type="string",
        ),
    )

    # How long a failed connection is taken as the answer: `verdi status` connects, then names
    # the broker (`str`, which says whether it is reachable) and must not wait a second time.
    FAILURE_KEPT = 5.0

    def __init__(self, profile):
        super().__init__(profile)
        self._communicator = None
        self._failed_at = None  # time.monotonic() of the last failed connection

    def _config(self):
        config = dict(self.get_default_config())
        config.update(self._profile.process_control_config or {})
        return config

    @property
    def namespace(self) -> str:
        return self._config()["namespace"] or f"aiida-{self._profile.uuid}"

    @property
    def address(self) -> str:
        return self._config()["address"] or DEFAULT_ADDR

    def __str__(self) -> str:
        where = f"tatzelwurm @ {self.address} (namespace {self.namespace})"
        return where if self.check_service_reachable() else f"{where} <not reachable>"

    def get_communicator(self, connect_timeout=3.0):
        # A few seconds, as RabbitMQ's refusal is at once: `verdi status` and the `verdi process`
        # commands call this as it is, and waited ten seconds for a coordinator that is down; a
        # daemon worker that starts then fails and circus starts it again. A connection once made
        # is kept through outages of any length (the communicator reconnects on its own).
        if self._communicator is None or self._communicator.is_closed():
            from aiida.brokers.rabbitmq.utils import get_launch_queue_name
            from aiida.manage.configuration import get_config_option
            from aiida.orm.utils import serialize

            from .kiwipy import TatzelwurmCommunicator

            config = self._config()
            try:
                self._communicator = TatzelwurmCommunicator(
                    self.address,
                    token_file=config["token_file"] or None,
                    namespace=self.namespace,
                    name=f"aiida-{self._profile.name}-{os.getpid()}",
                    task_queue=get_launch_queue_name(f"aiida-{self._profile.uuid}"),
                    task_prefetch_count=get_config_option("daemon.worker_process_slots"),
                    encoder=functools.partial(serialize.serialize, encoding="utf-8"),
                    decoder=serialize.deserialize_unsafe,
                    connect_timeout=connect_timeout,
                    on_tasks_lost=leave_lost_processes,
                )
            except Exception:
                self._failed_at = time.monotonic()
                raise
            self._failed_at = None
        return self._communicator

    def iterate_tasks(self) -> t.Iterator[t.Any]:
        """The process tasks waiting in the launch queue (for `verdi process repair`)."""
        return iter(self.get_communicator().waiting_tasks())

    def check_service_reachable(self) -> bool:
        if self._failed_at is not None and time.monotonic() - self._failed_at < self.FAILURE_KEPT:
            return False
        had = self._communicator is not None
        try:
            self.get_communicator(connect_timeout=2.0)  # `verdi status` should not hang
            return True
        except Exception:
            return False
        finally:
            if not had:
                self.close()

    def probe_service_status(self) -> dict:
        had = self._communicator is not None
        try:
            comm = self.get_communicator(connect_timeout=2.0)
            return {"connected": True, "address": self.address, "namespace": self.namespace,
                    "client_id": comm.worker_id}
        except Exception as e:
            return {"connected": False, "address": self.address, "error": f"{type(e).__name__}: {e}"}
        finally:
            if not had:
                self.close()

    def close(self) -> None:
        if self._communicator is not None:
            self._communicator.close()
            self._communicator = None


def configure(profile_name: str | None, address: str, token_file: str = "", namespace: str = "") -> str:
    """Points a profile's process controller at tatzelwurm (what `verdi profile configure-broker`
    does for AiiDA's own brokers, whose list of commands is fixed); returns the profile's name."""
    from aiida.manage.configuration import get_config

    config = get_config()
    profile = config.get_profile(profile_name) if profile_name else config.get_profile()
    profile.set_process_controller(
        name="tatzelwurm", config={"address": address, "token_file": token_file, "namespace": namespace}
    )
    config.update_profile(profile)
    config.store()
    return profile.name


def main(argv=None):
    """`python -m tatzelwurm.aiida [--profile P] --address HOST:PORT [--token-file F] [--namespace N]`"""
    import argparse

    p = argparse.ArgumentParser(prog="python -m tatzelwurm.aiida",
                                description="Make tatzelwurm the broker of an AiiDA profile.")
    p.add_argument("--profile", help="the profile (default: the default profile)")
    p.add_argument("--address", default=DEFAULT_ADDR, help="the coordinator, HOST:PORT or unix:PATH")
    p.add_argument("--token-file", default="", help="the coordinator's token file")
    p.add_argument("--namespace", default="", help="the namespace (default: the profile's UUID)")
    args = p.parse_args(argv)
    name = configure(args.profile, args.address, args.token_file, args.namespace)
    print(f"profile {name}: broker tatzelwurm at {args.address}")


if __name__ == "__main__":
    main()
