"""What every command shares for its output: results alone on stdout; progress bars,
FiftyOne's logs and the skipped files' lines around them."""

import contextlib
import logging
import os
import sys
import threading


_OPEN_BARS = set()  # closed before an error line, which must start a line of its own


class Progress:
    """A progress bar on stderr (stdout carries results only), ``leave=False``.

    The ``progress(fraction, label)`` callback of every long-running call
    (:mod:`lookalike.core.progress`): the label is shown beside the bar. Shown even
    when stderr is not a terminal: a log then records how far a job got.
    """

    def __init__(self, desc):
        self.desc, self.bar = desc, None

    def __call__(self, fraction, label):
        from tqdm import tqdm

        if self.bar is None:
            self.bar = tqdm(total=1.0, desc=self.desc, leave=False, file=sys.stderr, unit="",
                            bar_format="{desc}: {percentage:3.0f}%|{bar}| {elapsed}{postfix}")
            _OPEN_BARS.add(self)
        self.bar.set_postfix_str(label, refresh=False)
        self.bar.n = min(fraction, 1.0)
        self.bar.refresh()
        if fraction >= 1.0:
            self.close()  # a later phase of the job starts a new bar

    def close(self):
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        _OPEN_BARS.discard(self)


def close_open_bars():
    """Before an error line, which must start a line of its own."""
    for bar in list(_OPEN_BARS):
        bar.close()


@contextlib.contextmanager
def spinner(desc):
    """The elapsed time on stderr, for a step that reports no progress of its own."""
    from tqdm import tqdm

    bar = tqdm(total=None, desc=desc, bar_format="{desc} ... {elapsed}", leave=False,
               file=sys.stderr)
    stop = threading.Event()

    def tick():
        while not stop.wait(0.5):
            bar.refresh()

    thread = threading.Thread(target=tick, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        bar.close()


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
