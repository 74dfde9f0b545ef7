"""Running a delivery program for :mod:`slimta.relay.pipe`: spawn, feed, capture, kill.

Strategy: :class:`~slimta.relay.pipe.PipeRelay` decides *what* to run (the
arguments built from the envelope) and what the result means (exit status
and output to a relay error); this module only runs the program once and
reports what happened, and it is where the hard parts of that live:

* the program starts under :mod:`gevent.subprocess` (never a shell), in a
  process group of its own unless ``popen_kwargs`` say otherwise
  (:func:`_own_group`);
* three greenlets move data at once, one writing standard input
  (:func:`_feed`) and two reading standard output and standard error
  (:func:`_drain`), keeping only the first ``output_limit`` bytes of each;
* on the timeout, or anything else that interrupts the run, the whole
  group is killed and reaped (:func:`_kill`), so no grandchild survives
  holding the pipes open.

The module documentation of :mod:`slimta.relay.pipe` tells the same story
for users; log lines go to the pipe relay's logger, which the caller passes.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
from collections.abc import Mapping
from typing import IO, Any

import gevent
from gevent import subprocess

from slimta.logging.subprocess import SubprocessLogger
from slimta.relay import TransientRelayError
from slimta.smtp.reply import Reply

__all__ = ["FORBIDDEN_POPEN_KWARGS", "run"]

# Keyword arguments of Popen that would undo what the relay relies on: the
# pipes it reads and writes, bytes (not text) I/O, and no shell.
FORBIDDEN_POPEN_KWARGS = frozenset(
    {
        "stdin",
        "stdout",
        "stderr",
        "bufsize",
        "shell",
        "text",
        "universal_newlines",
        "encoding",
        "errors",
        "input",
    }
)
_READ_SIZE = 64 * 1024
# How long to wait for a killed child to be reaped before giving up on it.
_REAP_TIMEOUT = 5.0


def run(
    args: list[str],
    data: bytes,
    *,
    timeout: float | None,
    popen_kwargs: Mapping[str, Any],
    output_limit: int,
    log: SubprocessLogger,
) -> tuple[int, bytes, bytes]:
    """Run the program once; return its exit status and (clipped) output.

    Args:
        args: The program and its arguments.
        data: What to write to its standard input.
        timeout: Seconds the run may take; None for no limit.
        popen_kwargs: More :class:`gevent.subprocess.Popen` arguments.
        output_limit: Bytes kept of standard output and of standard error.
        log: Where the child's life is logged.

    Raises:
        TransientRelayError: The program could not be started, or it was
            killed at the timeout.
    """
    kwargs = _own_group(popen_kwargs)
    try:
        # A list of arguments, never a shell (ruff's S603 does not know
        # gevent.subprocess, so there is nothing to silence here).
        proc = subprocess.Popen(
            args,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            # Unbuffered: a write returns as soon as the pipe takes some
            # of the data, and closing never tries to flush leftovers
            # into a pipe nobody reads any more.
            bufsize=0,
            **kwargs,
        )
    except OSError as exc:
        reason = exc.strerror or str(exc)
        msg = f"Cannot run the delivery program {args[0]!r}: {reason}"
        raise TransientRelayError(msg, Reply("450", f"4.3.0 {msg}")) from exc
    log.popen(proc, args)
    assert proc.stdin is not None
    assert proc.stdout is not None
    assert proc.stderr is not None
    out_reader = gevent.spawn(_drain, proc.stdout, output_limit)
    err_reader = gevent.spawn(_drain, proc.stderr, output_limit)
    workers: list[gevent.Greenlet[Any, Any]] = [
        gevent.spawn(_feed, proc.stdin, data),
        out_reader,
        err_reader,
    ]
    timer = gevent.Timeout(timeout)
    timer.start()
    try:
        gevent.joinall(workers, raise_error=True)
        status = proc.wait()
    except BaseException as exc:
        # Our timer fired, an outer timeout or a kill reached this
        # greenlet, or a pipe failed in a way _feed and _drain do not
        # expect: in every case the child must not be left running.
        _kill(proc, workers, kwargs, log)
        if exc is timer:
            msg = f"The delivery program did not finish within {timeout} seconds"
            raise TransientRelayError(msg, Reply("450", f"4.4.2 {msg}")) from None
        raise
    finally:
        timer.close()
    stdout = out_reader.value or b""
    stderr = err_reader.value or b""
    log.stdio(proc, data, stdout, stderr)
    log.exit(proc)
    return status, stdout, stderr


def _kill(
    proc: subprocess.Popen[bytes],
    workers: list[gevent.Greenlet[Any, Any]],
    popen_kwargs: Mapping[str, Any],
    log: SubprocessLogger,
) -> None:
    with contextlib.suppress(ProcessLookupError):  # it may have exited just now
        if popen_kwargs.get("start_new_session"):
            # The group outlives the program while anything it started
            # still runs (the kernel does not hand out its id again
            # meanwhile), so this also reaches orphaned grandchildren.
            os.killpg(proc.pid, signal.SIGKILL)
        else:
            proc.kill()
    gevent.killall(workers)
    for stream in (proc.stdin, proc.stdout, proc.stderr):
        if stream is not None:
            _close_quietly(stream)
    with contextlib.suppress(subprocess.TimeoutExpired):  # SIGKILL cannot be ignored
        proc.wait(timeout=_REAP_TIMEOUT)
    log.exit(proc)


def _own_group(popen_kwargs: Mapping[str, Any]) -> dict[str, Any]:
    kwargs = dict(popen_kwargs)
    if "start_new_session" not in kwargs and "process_group" not in kwargs:
        # Its own process group, so that at the timeout everything the
        # program started (a shell script's children, say) is killed
        # with it, and none is left holding the pipes open.
        kwargs["start_new_session"] = True
    return kwargs


def _feed(stream: IO[bytes], data: bytes) -> None:
    """Write ``data`` to the child's standard input, then close it.

    A child that exits without reading all of it closes its end early; that
    is its choice (its exit status says how the delivery went), not an
    error of ours.
    """
    view = memoryview(data)
    try:
        while view:
            written = stream.write(view)
            view = view[written or 0 :]
    except BrokenPipeError:
        pass
    finally:
        _close_quietly(stream)


def _drain(stream: IO[bytes], limit: int) -> bytes:
    """Read ``stream`` to its end, keeping only its first ``limit`` bytes."""
    kept = bytearray()
    try:
        while True:
            chunk = stream.read(_READ_SIZE)
            if not chunk:
                break
            room = limit - len(kept)
            if room > 0:
                kept += chunk[:room]
    finally:
        _close_quietly(stream)
    return bytes(kept)


def _close_quietly(stream: IO[bytes]) -> None:
    try:
        stream.close()
    except OSError as exc:
        # Closing stdin flushes what is still buffered; a child that has gone
        # away makes that fail with EPIPE, which does not matter any more.
        if exc.errno != errno.EPIPE:
            raise
