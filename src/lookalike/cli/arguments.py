"""What commands share for their arguments: whole-number types, --dataset / --brain-key /
--tag, and the dataset or view these name."""

import argparse

from lookalike.core.errors import UsageError


def at_least(minimum):
    """An argparse type: a whole number >= ``minimum``."""
    def whole_number(text):
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value

    return whole_number


def brain_args(p, key_required=True, tag=True):
    p.add_argument("--dataset", required=True)
    p.add_argument("--brain-key", required=key_required, default=None,
                   help="a lookalike similarity run")
    if tag:
        p.add_argument("--tag", default=None, help="only samples with this tag")


def load_dataset(name):
    import fiftyone as fo

    if not fo.dataset_exists(name):
        raise UsageError(f"no dataset named '{name}'")
    return fo.load_dataset(name)


def dataset_view(args):
    view = load_dataset(args.dataset)
    if getattr(args, "tag", None):
        view = view.match_tags(args.tag)
    return view
