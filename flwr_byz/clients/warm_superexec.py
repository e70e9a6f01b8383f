"""A long-lived ClientApp executor for a SuperNode (``flower-supernode --isolation process``).

Flower 1.42 runs every message a SuperNode receives in a fresh ``flwr-clientapp`` process
(started by the SuperExec the SuperNode spawns, or by an external ``flower-superexec``): each
message pays for importing torch and Flower, importing the app and loading its data set. This
executor replaces the external ``flower-superexec``: one process per SuperNode that polls the
SuperNode's Runtime API for ClientApp tasks (``AcquireTask``, as ``flower-superexec`` does) and
runs each one in process, with the steps of Flower's ``flwr-clientapp`` (pull the message,
context and FAB; install the FAB; load the ClientApp; run it; push the reply and the context).
Imported modules and per-process caches (``flwr_byz.clients.runtime``: data set, partitions, model)
survive from one message to the next, as in Flower's simulation engine::

    flower-supernode --insecure --superlink HOST:PORT --port 9100 --isolation process \\
        --node-config "partition-id=0 num-partitions=4" &
    python -m flwr_byz.clients.warm_superexec --runtime-api-address 127.0.0.1:9100 --insecure \\
        --parent-pid $!

Tasks run one after another (a SuperNode hands out one message at a time). A ClientApp that
raises gets Flower's error reply (``CLIENT_APP_RAISED_EXCEPTION``); the executor goes on. The
modules of an app are keyed by the FAB's hash: a task of another FAB first drops the previous
FAB's modules (those loaded from its install directory) so that the new code is imported; and
the project's own packages, which importing this module imported from the installed copy, are
dropped before the first task (``PROJECT_PACKAGES``), so that the FAB's copy runs.
Not supported: SuperExec authentication (``--superexec-auth-secret-file``) and run-time
dependency installation.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from logging import ERROR, INFO
from pathlib import Path

_POLL_INTERVAL = 0.2  # s between AcquireTask calls when idle (flower-superexec: 1 s)
#: The project's package: imported with this module, and forgotten before the first task so that a
#: FAB's copy of it is the one its messages run.
PROJECT_PACKAGES = ("flwr_byz",)


def forget_project_modules() -> list[str]:
    """Drop the project's modules from ``sys.modules`` (the running code keeps its references);
    returns their names. The FAB's (or the installed) copies are imported again on use."""
    names = [
        name
        for name in sys.modules
        if name.partition(".")[0] in PROJECT_PACKAGES and name != __name__
    ]
    for name in names:
        del sys.modules[name]
    return names


@dataclass
class LoadedApps:
    """The FAB whose modules are imported in this process (their directory on sys.path)."""

    fab_hash: str = ""
    app_dir: Path | None = None
    installed: set[str] = field(default_factory=set)

    def switch_to(self, fab_hash: str, app_dir: Path) -> None:
        """Forget the modules of the previous FAB when another one arrives."""
        if fab_hash == self.fab_hash:
            return
        if self.app_dir is not None and self.app_dir != app_dir:
            old = str(self.app_dir)
            stale = [
                name
                for name, module in list(sys.modules.items())
                if (getattr(module, "__file__", None) or "").startswith(old + "/")
            ]
            for name in stale:
                del sys.modules[name]
            sys.path[:] = [entry for entry in sys.path if entry != old]
        self.fab_hash, self.app_dir = fab_hash, app_dir


def run_task(
    token: str,
    runtime_api_address: str,
    insecure: bool,
    certificates: bytes | None,
    loaded: LoadedApps,
) -> bool:
    """Run one ClientApp task in this process (``flwr-clientapp``'s steps, without its exit).

    Returns whether the ClientApp ran without raising."""
    from flwr.app import Message
    from flwr.app.error import Error
    from flwr.cli.install import install_from_fab
    from flwr.clientapp.client_app import LoadClientAppError
    from flwr.clientapp.utils import get_load_client_app_fn
    from flwr.common.config import get_project_dir
    from flwr.common.constant import ErrorCode, SubStatus
    from flwr.common.logger import log
    from flwr.supercore.heartbeat import HeartbeatSender, make_task_heartbeat_fn_http
    from flwr.supercore.interceptors import (
        RuntimeTokenHttpInterceptor,
        RuntimeVersionHttpInterceptor,
    )
    from flwr.supercore.retry import make_simple_http_retry_invoker
    from flwr.supercore.runtime import RuntimeHttpClient
    from flwr.supernode.runtime.run_clientapp import (
        pull_task_input,
        push_message,
        push_task_output,
    )

    retry_invoker = make_simple_http_retry_invoker()
    client = RuntimeHttpClient.from_server_address(
        server_address=runtime_api_address,
        insecure=insecure,
        root_certificates=certificates,
        interceptors=[
            RuntimeVersionHttpInterceptor(component_name="flwr-clientapp"),
            RuntimeTokenHttpInterceptor(token),
        ],
        retry_invoker=retry_invoker,
    )
    heartbeat = HeartbeatSender(make_task_heartbeat_fn_http(client))
    message = reply = context = None
    sub_status, details = SubStatus.FAILED, "ClientApp task failed due to unknown reason"
    try:
        heartbeat.start()
        message, context, run, fab = pull_task_input(client)
        app_dir = Path(get_project_dir(run.fab_id, run.fab_version, fab.hash_str))
        if fab.hash_str not in loaded.installed or not app_dir.is_dir():
            install_from_fab(fab.content, skip_prompt=True)
            loaded.installed.add(fab.hash_str)
        loaded.switch_to(fab.hash_str, app_dir)
        load = get_load_client_app_fn(default_app_ref="", app_path=None, multi_app=True)
        client_app = load(run.fab_id, run.fab_version, fab.hash_str)
        reply = client_app(message=message, context=context)
        sub_status, details = SubStatus.COMPLETED, ""
    except KeyboardInterrupt:  # stopping (the SuperNode is gone): one try to report, then out
        retry_invoker.max_tries = 1
        details = "Task stopped."
        raise
    except (Exception, SystemExit) as ex:  # the app's failure is its reply, not ours
        code = ErrorCode.CLIENT_APP_RAISED_EXCEPTION
        reason = f"{type(ex)}:<'{ex}'>"
        if isinstance(ex, LoadClientAppError):
            code = ErrorCode.LOAD_CLIENT_APP_EXCEPTION
            reason = "An exception was raised when attempting to load `ClientApp`"
        log(ERROR, "ClientApp raised an exception", exc_info=ex)
        details = reason
        if message is not None:
            reply = Message(Error(code=code, reason=reason), reply_to=message)
    finally:
        try:
            if reply is not None and context is not None:
                push_message(client, reply, context)
        except Exception as ex:  # logged; the SuperNode times the task out
            log(ERROR, "Failed to push the reply message", exc_info=ex)
            sub_status = SubStatus.FAILED
        push_task_output(client, context, sub_status, details)
        if heartbeat.is_running:
            heartbeat.stop()
        client.close()
    return sub_status == SubStatus.COMPLETED


def serve(
    runtime_api_address: str,
    insecure: bool,
    root_certificates: str | None = None,
    parent_pid: int | None = None,
    poll_interval: float = _POLL_INTERVAL,
    max_tasks: int | None = None,
) -> int:
    """Poll the SuperNode for ClientApp tasks and run them here; returns the tasks run."""
    import torch  # noqa: F401 - imported once here, not per message
    from flwr.common.logger import log
    from flwr.proto.runtime_pb2 import AcquireTaskRequest
    from flwr.supercore.app_utils import start_parent_process_monitor
    from flwr.supercore.constant import TaskType
    from flwr.supercore.interceptors import RuntimeVersionHttpInterceptor
    from flwr.supercore.retry import make_simple_http_retry_invoker
    from flwr.supercore.runtime import RuntimeHttpClient
    from flwr.supercore.tls import validate_and_resolve_root_certificates

    if parent_pid is not None:  # SIGINT (KeyboardInterrupt) when that process is gone
        start_parent_process_monitor(parent_pid)
    certificates = validate_and_resolve_root_certificates(root_certificates, insecure)
    client = RuntimeHttpClient.from_server_address(
        server_address=runtime_api_address,
        insecure=insecure,
        root_certificates=certificates,
        interceptors=[RuntimeVersionHttpInterceptor(component_name="SuperExec")],
        retry_invoker=make_simple_http_retry_invoker(),
    )
    forget_project_modules()
    loaded = LoadedApps()
    done = 0
    log(INFO, "flwr-byz warm SuperExec polling %s for ClientApp tasks", runtime_api_address)
    try:
        while max_tasks is None or done < max_tasks:
            res = client.AcquireTask(
                AcquireTaskRequest(supported_task_types=[TaskType.CLIENT_APP.value])
            )
            if not (res.HasField("task") and res.token):
                time.sleep(poll_interval)
                continue
            start = time.perf_counter()
            ok = run_task(res.token, runtime_api_address, insecure, certificates, loaded)
            done += 1
            log(
                INFO,
                "warm SuperExec: task %s (run %s) %s in %.2f s",
                res.task.task_id,
                res.task.run_id,
                "completed" if ok else "failed",
                time.perf_counter() - start,
            )
    except KeyboardInterrupt:
        log(INFO, "warm SuperExec stopped")
    finally:
        client.close()
    return done


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument(
        "--runtime-api-address",
        required=True,
        help="the SuperNode's Runtime API, HOST:PORT (its --host and --port)",
    )
    trust = parser.add_mutually_exclusive_group(required=True)
    trust.add_argument("--insecure", action="store_true", help="plain HTTP to the SuperNode")
    trust.add_argument("--root-certificates", help="CA of the SuperNode's --ssl-certfile")
    parser.add_argument(
        "--parent-pid", type=int, default=None, help="exit when this PID (the SuperNode) is gone"
    )
    parser.add_argument("--poll-interval", type=float, default=_POLL_INTERVAL)
    args = parser.parse_args(argv)
    serve(
        args.runtime_api_address,
        insecure=args.insecure,
        root_certificates=args.root_certificates,
        parent_pid=args.parent_pid,
        poll_interval=args.poll_interval,
    )


if __name__ == "__main__":
    main()
