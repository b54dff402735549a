"""What every command shares for its output: results alone on stdout; progress bars,
FiftyOne's logs and the skipped files' lines around them."""

import contextlib
import logging
import os
import sys
import threading
import time


_OPEN_BARS = set()  # closed before an error line, which must start a line of its own

# Where stderr is not a terminal (a log, a pipe, CI), a bar cannot redraw itself: progress
# is written as whole lines instead, the first after LOG_AFTER seconds (a command that fails
# or finishes sooner prints nothing but its result or its one error line), then one every
# LOG_EVERY seconds, so that a log records how far a long job got.
LOG_AFTER, LOG_EVERY = 10.0, 30.0


def _on_terminal():
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # replaced by an object without it, or closed
        return False


def _elapsed(seconds):
    from tqdm import tqdm

    return tqdm.format_interval(seconds)


class _LogLines:
    """Progress as whole lines on stderr, at most one every LOG_EVERY seconds (see above)."""

    def __init__(self):
        self.start = time.monotonic()
        self.due = self.start + LOG_AFTER

    def write(self, text):
        now = time.monotonic()
        if now < self.due:
            return
        self.due = now + LOG_EVERY
        print(f"{text} ({_elapsed(now - self.start)})", file=sys.stderr, flush=True)


class Progress:
    """A progress bar on stderr (stdout carries results only), cleared when done.

    The ``progress(fraction, label)`` callback of every long-running call
    (:mod:`lookalike.core.progress`): the label is shown beside the bar. Where stderr
    is not a terminal, whole lines now and then instead (see LOG_AFTER), so that a
    log records how far a long job got and a short one leaves nothing behind.
    """

    def __init__(self, desc):
        self.desc, self.bar, self.lines = desc, None, None

    def __call__(self, fraction, label):
        if self.bar is None and self.lines is None:
            if _on_terminal():
                from tqdm import tqdm

                self.bar = tqdm(total=1.0, desc=self.desc, leave=False, file=sys.stderr,
                                unit="", bar_format="{desc}: {percentage:3.0f}%|{bar}| "
                                                    "{elapsed}{postfix}")
            else:
                self.lines = _LogLines()
            _OPEN_BARS.add(self)
        if self.bar is not None:
            self.bar.set_postfix_str(label, refresh=False)
            self.bar.n = min(fraction, 1.0)
            self.bar.refresh()
        else:
            self.lines.write(f"{self.desc}: {100 * min(max(fraction, 0.0), 1.0):3.0f}% {label}")
        if fraction >= 1.0:
            self.close()  # a later phase of the job starts a new bar

    def close(self):
        if self.bar is not None:
            self.bar.close()  # leave=False: the line is erased
            self.bar = None
        self.lines = None
        _OPEN_BARS.discard(self)


def close_open_bars():
    """Before an error line, which must start a line of its own."""
    for bar in list(_OPEN_BARS):
        bar.close()


@contextlib.contextmanager
def spinner(desc):
    """The elapsed time on stderr, for a step that reports no progress of its own (whole
    lines now and then where stderr is not a terminal, as :class:`Progress`)."""
    stop = threading.Event()
    if _on_terminal():
        from tqdm import tqdm

        bar = tqdm(total=None, desc=desc, bar_format="{desc} ... {elapsed}", leave=False,
                   file=sys.stderr)
        tick, wait = bar.refresh, 0.5
    else:
        bar, lines = None, _LogLines()
        tick, wait = (lambda: lines.write(f"{desc} ...")), 1.0

    def ticking():
        while not stop.wait(wait):
            tick()

    thread = threading.Thread(target=ticking, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        if bar is not None:
            bar.close()  # leave=False: the line is erased


def results_only_on_stdout():
    """FiftyOne logs (and draws its progress bars) on stdout: send all of that to stderr.

    Scripts parse our stdout. FiftyOne adds its log handlers on import, for the
    destinations "stdout" and "stdout,stderr" only; given another it adds none,
    and ours below write to stderr. Where fiftyone is already imported, its
    handlers are pointed at stderr instead.
    """
    os.environ["FIFTYONE_LOGGING_DESTINATION"] = "stderr"
    os.environ["FIFTYONE_SHOW_PROGRESS_BARS"] = "false"  # eta's bars write to stdout
    if "fiftyone" in sys.modules:
        import fiftyone as fo

        fo.config.show_progress_bars = False
    for name in ("fiftyone", "eta"):
        logger = logging.getLogger(name)
        handlers = [h for h in logger.handlers if isinstance(h, logging.StreamHandler)]
        for handler in handlers:
            if handler.stream is sys.stdout:
                handler.setStream(sys.stderr)
        if not handlers:
            handler = logging.StreamHandler(sys.stderr)
            handler.setFormatter(logging.Formatter("%(message)s"))
            logger.addHandler(handler)
            level = os.environ.get("FIFTYONE_LOGGING_LEVEL", "INFO").upper()
            logger.setLevel(level if isinstance(logging.getLevelName(level), int) else "INFO")


def with_progress(fn, desc, **kwargs):
    """``fn(**kwargs)`` under a progress bar: fed by ``fn``'s ``progress`` parameter where it
    has one, else showing the elapsed time."""
    import inspect

    if "progress" in inspect.signature(fn).parameters:
        return fn(progress=Progress(desc), **kwargs)
    with spinner(desc):
        return fn(**kwargs)


def print_failures(failures):
    for failure in failures:
        print(f"  skipped {failure.path}: {failure.reason}")
