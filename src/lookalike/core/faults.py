"""Named points where tests stop or kill a real job (fault injection), and nothing else.

Every job that writes calls :func:`point` at the moments a kill would hurt most
(between two writes). Outside tests it costs one dictionary lookup. A test runs
the job in a child process with::

    LOOKALIKE_FAULT=<name>:<action>[:<nth>]   action: kill | pause | hold | note
    LOOKALIKE_FAULT_FILE=/tmp/reached          (written when the point is reached)

``kill`` ends the process at once with SIGKILL (no clean-up runs, as with
``kill -9``); ``pause`` writes the file and sleeps until the test kills the
process (or races a second job against it); ``hold`` writes the file and
waits until the test removes it, then goes on (the test changes the world
meanwhile: stops the database, starts a rival); ``note`` only writes the file
(the test then knows the job got that far). ``nth`` (default 1) picks which
passage through the point fires.
"""

import os
import signal
import time

ENV = "LOOKALIKE_FAULT"
FILE_ENV = "LOOKALIKE_FAULT_FILE"
_passes = {}


def point(name):
    spec = os.environ.get(ENV)
    if not spec:
        return
    target, action, *nth = spec.split(":")
    if target != name:
        return
    _passes[name] = _passes.get(name, 0) + 1
    if _passes[name] != (int(nth[0]) if nth else 1):
        return
    marker = os.environ.get(FILE_ENV)
    if marker:
        with open(marker, "w") as f:
            f.write(f"{name} {os.getpid()}\n")
    if action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    elif action == "pause":
        while True:  # until the test kills us
            time.sleep(0.2)
    elif action == "hold":
        while marker and os.path.exists(marker):  # until the test lets us go on
            time.sleep(0.1)
