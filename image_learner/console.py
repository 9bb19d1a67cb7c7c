"""What the user reads: the tool's own lines on the console; Ludwig's and the libraries' output (tables,
progress bars, warnings, C-level messages, the data-parallel workers') in a log file in the output folder.

``log`` writes one ``[image-learner]`` line to the console (and to the log file while one is open).
``library_output_to`` is the block around the Ludwig calls: it points ``sys.stdout`` / ``sys.stderr``, the
file descriptors 1 and 2 (C code, subprocesses) and the logging handlers that wrote to them at the log
file, and puts everything back afterwards; with ``verbose`` it leaves them on the console, as before.
Nothing of Ludwig is patched. It imports no other module of the tool.
"""

from __future__ import annotations

import io
import logging
import os
import sys
from contextlib import contextmanager

PREFIX = "[image-learner] "

_console = None  # while library output is redirected: a stream to the real console
_copy = None  # while a log file is open: every line of ours goes there too


def log(message: str) -> None:
    """One line of the tool's own progress, always on the console."""
    echo(PREFIX + message)


def echo(line: str) -> None:
    """A finished line (e.g. a data-parallel worker's own ``[image-learner]`` line) to the console."""
    print(line, file=_console or sys.stdout, flush=True)
    if _copy is not None:
        print(line, file=_copy, flush=True)


def console_is_terminal() -> bool:
    """Whether the user's console is a terminal (Galaxy's stdout is a file: no carriage-return bars there)."""
    stream = _console or sys.stdout
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def is_redirected() -> bool:
    """Whether library output goes to the log file now (not ``--verbose``)."""
    return _console is not None


def _private_copy(stream):
    """A stream to where ``stream`` writes that survives redirecting fd 1/2: a duplicate of its descriptor,
    or the stream itself when it has none (pytest's capsys, a StringIO)."""
    try:
        fd = stream.fileno()
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
        return stream, False
    return os.fdopen(os.dup(fd), "w", buffering=1, encoding="utf-8", errors="replace"), True


@contextmanager
def library_output_to(path: str, verbose: bool = False):
    """While the block runs, library output goes to the log file ``path`` (appended), ours to the console
    and the file; with ``verbose``, library output stays on the console and the file holds our lines."""
    global _console, _copy
    if _copy is not None:  # nested (a fold inside a run): the outer block already redirects
        yield
        return
    log_file = open(path, "a", buffering=1, encoding="utf-8", errors="replace")
    if verbose:
        log_file.write("(--verbose: Ludwig's and the libraries' output went to the console)\n")
        _copy = log_file
        try:
            yield
        finally:
            _copy = None
            log_file.close()
        return
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    old_out, old_err = sys.stdout, sys.stderr
    originals = {id(s) for s in (old_out, old_err, sys.__stdout__, sys.__stderr__) if s is not None}
    # the console's handlers; also one left on a closed stream (a previous run in this process, e.g. tests)
    swapped = [(h, h.stream) for h in _stream_handlers()
               if id(h.stream) in originals or getattr(h.stream, "closed", False)]
    console, owned = _private_copy(sys.stdout)
    saved = []
    try:
        for handler, _ in swapped:
            _set_stream(handler, log_file)
        saved = _redirect_fds(log_file.fileno())
        sys.stdout = sys.stderr = log_file
        _console, _copy = console, log_file
        yield
    finally:
        log_file.flush()
        sys.stdout, sys.stderr = old_out, old_err
        _console = _copy = None
        _restore_fds(saved)
        for handler, stream in swapped:
            _set_stream(handler, old_out if getattr(stream, "closed", False) else stream)
        for handler in _stream_handlers():  # made inside the block (Ludwig's basicConfig at its import)
            if handler.stream is log_file:
                _set_stream(handler, old_out)
        if owned:
            console.close()
        log_file.close()


def _stream_handlers() -> list[logging.StreamHandler]:
    """The logging handlers that write to a stream (Ludwig's root handler on stdout among them)."""
    loggers = [logging.getLogger()] + [logging.getLogger(name) for name in list(logging.root.manager.loggerDict)]
    # a handler whose stream is a read-only property (logging's last resort) follows sys.stderr by itself
    return [h for lg in loggers if isinstance(lg, logging.Logger) for h in lg.handlers
            if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler)
            and not isinstance(getattr(type(h), "stream", None), property)]


def _set_stream(handler: logging.StreamHandler, stream) -> None:
    """``handler.setStream``, also when the stream it had is closed (setStream flushes it first)."""
    try:
        handler.setStream(stream)
    except ValueError:
        handler.stream = stream


def _redirect_fds(target: int) -> list[tuple[int, int]]:
    """Point fd 1 and 2 at ``target``; returns (fd, saved copy) to put back. Skipped where a descriptor
    is closed."""
    saved = []
    for fd in (1, 2):
        try:
            saved.append((fd, os.dup(fd)))
        except OSError:
            continue
        os.dup2(target, fd)
    return saved


def _restore_fds(saved: list[tuple[int, int]]) -> None:
    for fd, copy in saved:
        os.dup2(copy, fd)
        os.close(copy)


def duration(seconds: float) -> str:
    """``42 s``, ``3 min 05 s``, ``1 h 02 min``."""
    seconds = int(round(max(0.0, seconds)))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


def epoch_line(epoch: int, epochs: int, train_loss: float | None, metric: str, value: float | None,
               best_value: float | None, best_epoch: int | None, elapsed: float) -> str:
    """One epoch's line: ``epoch 3/15: train loss 0.812, validation balanced accuracy 0.412 (best 0.455,
    epoch 2), 36 s, at most 2 min 24 s left``. What is left is an upper bound: early stopping may end
    training sooner."""
    def num(v):
        return "n/a" if v is None or v != v else f"{v:.4g}" if abs(v) >= 1000 else f"{v:.3f}"

    parts = [f"epoch {epoch}/{epochs}:", f"train loss {num(train_loss)},"]
    if value is not None:
        best = f" (best {num(best_value)}, epoch {best_epoch})" if best_epoch else ""
        parts.append(f"validation {metric.replace('_', ' ')} {num(value)}{best},")
    left = elapsed / epoch * (epochs - epoch) if epoch else 0.0
    parts.append(f"{duration(elapsed)}" + (f", at most {duration(left)} left" if epoch < epochs else ""))
    return " ".join(parts)
