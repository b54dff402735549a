"""The CLI run in this process: ``lookalike.cli.main(argv)`` with stdout and stderr captured.

For tests of wording and exit codes, which need no new Python (4-10 s each). Tests where
the process is the point (kills, races, a fresh process loading state, the frameworks'
own log lines, stdout/stderr through a real pipe) start ``python -m lookalike.cli``.
"""

import contextlib
import dataclasses
import io
import logging
import os


@dataclasses.dataclass
class Ran:
    returncode: int
    stdout: str
    stderr: str


def run_cli(*argv):
    """``Ran(returncode, stdout, stderr)`` of ``lookalike ARGV``, as a terminal would see it."""
    import fiftyone as fo
    from lookalike import cli

    # main() points FiftyOne's logging and bars at stderr for the process's life: give
    # this process back what it had, so the next test logs where it did before.
    saved_env = {k: os.environ.get(k) for k in ("FIFTYONE_LOGGING_DESTINATION",
                                                "FIFTYONE_SHOW_PROGRESS_BARS")}
    saved_bars = fo.config.show_progress_bars
    loggers = [logging.getLogger(name) for name in ("fiftyone", "eta")]
    saved_handlers = [(lg, list(lg.handlers), lg.level,
                       [(h, getattr(h, "stream", None)) for h in lg.handlers]) for lg in loggers]
    out, err = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = cli.main([str(a) for a in argv])
            except SystemExit as e:  # argparse's own refusals
                code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    finally:
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        fo.config.show_progress_bars = saved_bars
        for lg, handlers, level, streams in saved_handlers:
            lg.handlers[:] = handlers
            lg.setLevel(level)
            for handler, stream in streams:
                if stream is not None and isinstance(handler, logging.StreamHandler):
                    handler.setStream(stream)
    return Ran(code or 0, out.getvalue(), err.getvalue())
