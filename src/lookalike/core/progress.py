"""The one progress convention of every long-running public call: ``progress(fraction, label)``.

``fraction`` runs from 0 to 1 over the whole call and ``label`` says in words
what is happening ("embedded 120/480"), so that the App (``ctx.set_progress``),
the CLI's bar and a script all take the same callable. A call made of stages
hands each stage a :func:`stage` of its own callback, so that inner loops can
count ``done`` of ``total`` without knowing where they sit in the whole.
"""


def report(progress, done, total, label):
    """``progress(done / total, label)``, or nothing when there is no callback."""
    if progress is not None:
        progress(min(1.0, done / max(total, 1)), label)


def stage(progress, start, share, noun=None):
    """A ``counter(done, total)`` that reports ``start + share * done / total`` to ``progress``.

    The label is ``f"{noun} {done}/{total}"`` (``noun`` such as "embedded");
    None when there is no callback, so inner loops can skip the work.
    """
    if progress is None:
        return None

    def counter(done, total, label=None):
        fraction = start + share * min(1.0, done / max(total, 1))
        progress(fraction, label or (f"{noun} {done}/{total}" if noun else f"{done}/{total}"))

    return counter


def scaled(progress, start, share):
    """A ``progress(fraction, label)`` for one stage, mapped onto ``[start, start + share]``."""
    if progress is None:
        return None
    return lambda fraction, label: progress(start + share * min(1.0, max(0.0, fraction)), label)
