"""``slimta run``: the node's process lifecycle.

.. versionadded:: 0.1.0

Start-up order, chosen so that a bad configuration fails before anything
is bound and privileges are dropped only when nothing needs them any more:

1. read and check the configuration (exit status 2 on any problem);
2. refuse to start when another node answers on the control socket (it
   owns the spool);
3. build relays and queues (disk spool directories are created);
4. bind every listening socket (exit status 1 if one is in use);
5. ``--daemon``: detach, point stdio at the log file (or /dev/null);
6. switch to ``[process] user``/``group``; write the pid file;
7. open the control socket and the metrics endpoint, start the queues
   (they load the spool) and accept connections.

Signals: ``SIGTERM`` and ``SIGINT`` stop the node gracefully (see
:meth:`slimta.app.build.Sessions.drain`); ``SIGHUP`` reloads the
configuration file, keeping the listening sockets and the queues -- a
configuration that fails its checks is logged and ignored.
"""

from __future__ import annotations

import contextlib
import json
import logging
import logging.handlers
import os
import signal
import socket as stdlib_socket
import sys
import time
from typing import TYPE_CHECKING, Any

import gevent
from gevent.event import Event
from gevent.server import StreamServer

from slimta import logging as slimta_logging
from slimta.app.build import Node
from slimta.app.config import Config, ConfigError, default_config, load_config, parse_address
from slimta.app.metrics import Metrics
from slimta.app.queuecmd import QueueOps, ask_node, handle_request
from slimta.core import SlimtaError
from slimta.logging import socket as socket_logging
from slimta.util import ListenerError, create_listeners
from slimta.util.system import PidFile, daemonize, drop_privileges, redirect_stdio

if TYPE_CHECKING:
    from gevent import socket as gsocket

__all__ = ["Runner", "read_config", "setup_logging"]

_log = logging.getLogger("slimta.app")
_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"


def read_config(path: str | None) -> Config:
    """Load ``path``, or the embedded default when it is None."""
    return load_config(path) if path else default_config()


def setup_logging(config: Config) -> None:
    """Send log lines to the configured file (or stderr) at the configured level."""
    process = config.process
    root = logging.getLogger()
    for old in list(root.handlers):
        if getattr(old, "_slimta_app", False):
            root.removeHandler(old)
            old.close()
    handler: logging.Handler
    if process["log_file"]:
        handler = logging.handlers.WatchedFileHandler(process["log_file"])
    else:
        handler = logging.StreamHandler(sys.stderr)
    setattr(handler, "_slimta_app", True)  # noqa: B010 - a mark for the next reload
    handler.setFormatter(logging.Formatter(_FORMAT))
    root.addHandler(handler)
    root.setLevel(process["log_level"].upper())
    socket_logging.socket_error_log_level = logging.getLevelName(process["socket_error_log_level"].upper())


class Runner:
    """Runs one node: start-up, signals, reload and shutdown.

    Args:
        path: The configuration file, or None for the embedded default.
        config: The configuration already read from it.
    """

    def __init__(self, path: str | None, config: Config) -> None:
        self.path = path
        self.config = config
        self.metrics = Metrics()
        self.node = Node(config, self.metrics)
        self.stopping = Event()
        self._control: StreamServer | None = None
        self._metrics_server: Any = None
        self._started = time.monotonic()

    def prepare(self) -> None:
        """Steps 2-4: check for another node, build, bind.

        Raises:
            ConfigError: Another node runs, or building failed.
            ListenerError: A socket could not be bound.
        """
        path = self.config.process["control_socket"]
        with contextlib.suppress(OSError, ValueError):
            if ask_node(path, {"cmd": "stats"}, timeout=2.0) is not None:
                raise ConfigError(
                    f"another slimta node answers on the control socket {path}: it owns this spool",
                    self.config.source,
                )
        self.node.prepare()
        self.node.bind()

    def become_daemon(self) -> None:
        """Step 5: detach and point stdio at the log file."""
        daemonize()
        log_file = self.config.process["log_file"] or None
        redirect_stdio(stdout=log_file, stderr=log_file)

    def serve(self) -> int:
        """Steps 6-7, then wait for a signal; return the exit status."""
        process = self.config.process
        if process["user"] or process["group"]:
            drop_privileges(process["user"] or None, process["group"] or None)
        with PidFile(process["pid_file"] or None):
            self._start_control()
            self._start_metrics()
            self.node.start()
            gevent.signal_handler(signal.SIGTERM, self.stopping.set)
            gevent.signal_handler(signal.SIGINT, self.stopping.set)
            gevent.signal_handler(signal.SIGHUP, lambda: gevent.spawn(self.reload))
            slimta_logging.logline(
                _log.info,
                "process",
                os.getpid(),
                "start",
                config=self.config.source,
                seconds=round(time.monotonic() - self._started, 3),
            )
            self.stopping.wait()
            slimta_logging.logline(_log.info, "process", os.getpid(), "stop", grace=process["grace_period"])
            self._stop_control()
            self.node.shutdown(self.config.process["grace_period"])
            if self._metrics_server is not None:
                self._metrics_server.stop(timeout=1)
        slimta_logging.logline(_log.info, "process", os.getpid(), "exit")
        return 0

    # -- reload -----------------------------------------------------------------------

    def reload(self) -> None:
        """Re-read the configuration and switch to it; keep running on errors."""
        try:
            config = read_config(self.path)
        except ConfigError as exc:
            slimta_logging.logline(_log.error, "config", os.getpid(), "reload_failed", error=str(exc))
            return
        for key in ("user", "group", "pid_file", "daemon", "control_socket"):
            if config.process[key] != self.config.process[key]:
                slimta_logging.logline(
                    _log.warning, "config", config.source, "needs_restart", key=f"process.{key}"
                )
                config.process.values[key] = self.config.process[key]
        try:
            self.node.reload(config)
        except (SlimtaError, OSError) as exc:
            slimta_logging.logline(_log.error, "config", os.getpid(), "reload_failed", error=str(exc))
            return
        setup_logging(config)
        if config.process["metrics"] != self.config.process["metrics"]:
            if self._metrics_server is not None:
                self._metrics_server.stop(timeout=1)
                self._metrics_server = None
            self.config = config
            self._start_metrics()
        self.config = config

    # -- control socket and metrics ----------------------------------------------------------

    def _start_control(self) -> None:
        path = self.config.process["control_socket"]
        if not path:
            return
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)  # stale: no node answered on it (checked in prepare)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        old_umask = os.umask(0o177)
        try:
            sock = create_listeners(path, family=stdlib_socket.AF_UNIX)[0]
        finally:
            os.umask(old_umask)
        self._control = StreamServer(sock, self._control_session)
        self._control.start()

    def _stop_control(self) -> None:
        if self._control is not None:
            self._control.close()
            with contextlib.suppress(OSError):
                os.unlink(self.config.process["control_socket"])

    def _control_session(self, sock: gsocket.socket, address: Any) -> None:
        sock.settimeout(30.0)
        data = b""
        try:
            while not data.endswith(b"\n") and len(data) < 65536:
                chunk = sock.recv(65536)
                if not chunk:
                    return
                data += chunk
            try:
                request = json.loads(data)
            except ValueError:
                answer: dict[str, Any] = {"ok": False, "error": "not JSON"}
            else:
                ops = QueueOps(dict(self.node.queues))
                answer = handle_request(ops, request if isinstance(request, dict) else {})
            sock.sendall(json.dumps(answer, default=str).encode() + b"\n")
        except OSError:
            pass
        finally:
            sock.close()

    def _start_metrics(self) -> None:
        address = self.config.process["metrics"]
        if not address or not self.metrics.enabled:
            return
        from gevent.pywsgi import WSGIServer

        host, port = parse_address(address)
        self._metrics_server = WSGIServer((host, port), self.metrics.wsgi_app(), log=None)
        self._metrics_server.start()
        slimta_logging.logline(_log.info, "metrics", os.getpid(), "listen", address=address)


def run(path: str | None, daemon: bool) -> int:
    """``slimta run``: start a node and serve until stopped; return the exit status."""
    try:
        config = read_config(path)
    except ConfigError as exc:
        sys.stderr.write(f"slimta: {exc}\n")
        return 2
    setup_logging(config)
    runner = Runner(path, config)
    try:
        runner.prepare()
    except ListenerError as exc:
        sys.stderr.write(f"slimta: {exc}\n")
        return 1
    except (ConfigError, SlimtaError, OSError) as exc:
        sys.stderr.write(f"slimta: {exc}\n")
        return 2
    if daemon or config.process["daemon"]:
        runner.become_daemon()
    try:
        return runner.serve()
    except (SlimtaError, OSError) as exc:
        sys.stderr.write(f"slimta: {exc}\n")
        return 1
