"""The ``lookalike`` command line: ``lookalike demo``, ``import``, ``train``, ``curate``, ...

One module per group of commands, each command's arguments (``_add_<command>``) beside
its handler (``cmd_<command>``); :mod:`lookalike.cli.output` and
:mod:`lookalike.cli.arguments` hold what the commands share. Here: the parser, and the
one-line errors and exit codes of :func:`main`.
"""

import argparse
import sys
import traceback

from lookalike.cli import curation, demo, encoders, images, index, install, match
from lookalike.cli.output import close_open_bars, results_only_on_stdout
from lookalike.core.errors import LookalikeError, TrainingStopped, one_line


class _CommandParser(argparse.ArgumentParser):
    """argparse with one-line usage errors (``lookalike <cmd>: error: <reason>``, exit 2)
    and ``--debug`` on every command (subcommands get this class too)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # SUPPRESS: a subcommand's default must not undo `lookalike --debug <cmd>`.
        self.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                          help="on an error, print its traceback too")

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {one_line(message)}\n")


def build_parser():
    parser = _CommandParser(
        prog="lookalike",
        description="Visual similarity search and curation for FiftyOne datasets.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    # In the order of `lookalike --help`.
    demo.add_commands(sub)
    images.add_commands(sub)
    encoders.add_commands(sub)
    index.add_commands(sub)
    curation.add_commands(sub)
    match.add_commands(sub)
    encoders.add_stop_command(sub)  # listed after the dataset commands
    install.add_commands(sub)
    return parser


def main(argv=None):
    """Runs one command; exit 0, or one line on stderr and 2 (our reason: bad input, an
    unusable environment), 3 (training stopped on request), 1 (a bug), 130 (Ctrl-C)."""
    args = build_parser().parse_args(argv)
    results_only_on_stdout()
    from lookalike.core.database import ensure_mongod, quiet_mongodb_version_warning

    quiet_mongodb_version_warning()
    try:
        if getattr(args, "needs_database", True):
            ensure_mongod(install=False)
        code = args.func(args)
        _remember_index(args)
        return code
    except TrainingStopped as e:
        return _fail(args, one_line(e), 3)
    except LookalikeError as e:
        return _fail(args, f"error: {one_line(e)}", 2)
    except KeyboardInterrupt:
        return _fail(args, "interrupted", 130)
    except Exception as e:
        if not _database_unreachable(e):
            return _fail_with_bug(args, e)
        return _fail(args, f"error: the database did not answer ({type(e).__name__}): start it "
                     "again and rerun; finished work is kept and the rerun completes the rest", 2)


def _database_unreachable(error):
    """Whether ``error`` says MongoDB went away (a crash, a restart): a reason, not a bug."""
    import pymongo.errors

    return isinstance(error, pymongo.errors.ConnectionFailure)  # timeouts, lost connections


def _fail_with_bug(args, e):
    """A bug: one line, the traceback with --debug."""
    hint = "" if getattr(args, "debug", False) else " (run with --debug for the traceback)"
    return _fail(args, f"error: {type(e).__name__}: {one_line(e)}{hint}", 1)


def _remember_index(args):
    """A command that ran with an index makes it the one the App and the CLI offer first."""
    brain_key, name = getattr(args, "brain_key", None), getattr(args, "dataset", None)
    if brain_key and name:
        from lookalike.cli.arguments import load_dataset
        from lookalike.curation.index_choice import remember_index

        remember_index(load_dataset(name), brain_key)


def _fail(args, line, code):
    close_open_bars()
    sys.stdout.flush()
    if getattr(args, "debug", False):
        traceback.print_exc()
    print(f"lookalike {args.command}: {line}", file=sys.stderr)
    return code
