"""Matching against a similarity run: ``lookalike match-labels`` (unlabelled samples) and
``match`` (a folder of new images)."""

import os
import time

from lookalike.cli.arguments import at_least, brain_args, dataset_view
from lookalike.cli.output import Progress, print_failures
from lookalike.core import fo_adapter
from lookalike.core.errors import UsageError


def add_commands(sub):
    """The group's commands, in the order of `lookalike --help`. Each _add_* imports the
    package's own constants for its choices (each validated where it is used), so that
    `import lookalike.cli` stays light."""
    _add_match_labels(sub)
    _add_match(sub)


def _add_match_labels(sub):
    from lookalike.curation.label_matching import STRATEGIES

    ml = sub.add_parser("match-labels", help="label unlabelled samples from their nearest "
                                             "labelled ones, or 'no match'")
    brain_args(ml)
    ml.add_argument("--label-field", required=True)
    ml.add_argument("--pred-field", default=None, help="default <label field>_match")
    ml.add_argument("--strategy", default="nearest", choices=STRATEGIES)
    ml.add_argument("-k", type=at_least(1), default=5,
                    help="neighbours that vote (--strategy vote)")
    ml.add_argument("--all", action="store_true", help="also re-predict labelled samples")
    ml.set_defaults(func=cmd_match_labels)


def cmd_match_labels(args):
    from lookalike.curation import match_labels

    report = match_labels(dataset_view(args), args.brain_key, args.label_field,
                          pred_field=args.pred_field, strategy=args.strategy, k=args.k,
                          unlabelled_only=not args.all, progress=Progress("matching"))
    print(report.summary())
    return 0


def _add_match(sub):
    from lookalike.curation.folder_matching import ADD_MODES

    mt = sub.add_parser("match", help="match a folder of new images: duplicate, match or new")
    brain_args(mt, key_required=False)
    mt.add_argument("--images", required=True, help="folder of images (searched recursively)")
    mt.add_argument("--add", default="none", choices=ADD_MODES,
                    help="import the new images (tagged with the batch), all, or none")
    mt.add_argument("--label-field", default=None,
                    help="predict this label (default: the calibration's)")
    mt.add_argument("--out", default=None,
                    help="the table (.csv or .json; default lookalike-match-<time>.csv)")
    mt.add_argument("--no-verify", action="store_true",
                    help="no geometric verification: beyond the duplicate threshold an image "
                         "is new")
    mt.add_argument("--show", type=at_least(0), default=50, help="rows printed")
    mt.set_defaults(func=cmd_match)


def cmd_match(args):
    from lookalike.curation import match_images

    view = dataset_view(args)
    brain_key = args.brain_key or _only_run(view)
    out = args.out or f"lookalike-match-{time.strftime('%Y%m%d-%H%M%S')}.csv"
    report = match_images(view, brain_key, args.images, add=args.add,
                          label_field=args.label_field, out=out,
                          verify=False if args.no_verify else "auto",
                          progress=Progress("matching"))
    width = max([len(r.file) for r in report.rows] + [4])
    for r in report.rows[:args.show]:
        nearest = os.path.basename(r.nearest_path) if r.nearest_path else "-"
        dist = f"{r.distance:.4f}" if r.distance is not None else "-"
        label = f"  label {r.label}" if r.label is not None else ""
        note = f"  ({r.note})" if r.verified else ""
        print(f"  {r.file:<{width}}  {r.decision:<9}  {dist}  {nearest}{label}{note}")
    if len(report.rows) > args.show:
        print(f"  ... {len(report.rows) - args.show} more in {out}")
    print_failures(report.unreadable)
    print(report.summary())
    print(f"table: {out}")
    return 0


def _only_run(samples):
    import lookalike.similarity as ls

    keys = ls.our_brain_keys(fo_adapter.root_dataset(samples))
    if len(keys) != 1:
        raise UsageError(f"give --brain-key (lookalike indexes: {', '.join(keys) or 'none'})")
    return keys[0]
