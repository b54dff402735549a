"""Curation on a similarity run: ``lookalike dedupe`` (a folder in one command), ``curate``,
``calibrate``, ``duplicates`` (and ``--delete``), ``leaks``, ``undelete``, ``outliers``,
``evaluate``, ``figures`` and ``visualize``."""

from lookalike.cli.arguments import at_least, brain_args, dataset_view, load_dataset
from lookalike.cli.output import Progress, spinner, with_progress
from lookalike.core.errors import UsageError


def add_commands(sub):
    """The group's commands, in the order of `lookalike --help`. Each _add_* imports the
    package's own constants for its choices (each validated where it is used), so that
    `import lookalike.cli` stays light."""
    _add_dedupe(sub)
    _add_curate(sub)
    _add_calibrate(sub)
    _add_duplicates(sub)
    _add_leaks(sub)
    _add_undelete(sub)
    _add_outliers(sub)
    _add_evaluate(sub)
    _add_figures(sub)
    _add_visualize(sub)


def _add_dedupe(sub):
    from lookalike.curation.dedupe import SAMPLE_SIZE, TRAINING

    ded = sub.add_parser("dedupe", help="a folder to duplicate groups in one command: import, "
                         "train an encoder if needed, embed, index, calibrate, find duplicates "
                         "and outliers")
    ded.add_argument("directory", help="folder of images (searched recursively)")
    ded.add_argument("--dataset", default=None,
                     help="dataset name (default: the folder's name); an existing one gets "
                     "only the new files")
    ded.add_argument("--encoder", default=None,
                     help="encoder to embed with (default: train '<dataset>-dedupe' once)")
    ded.add_argument("--sample-size", type=at_least(2), default=SAMPLE_SIZE,
                     help=f"images the encoder trains on (default {SAMPLE_SIZE})")
    ded.add_argument("--epochs", type=at_least(1), default=TRAINING["epochs"])
    ded.add_argument("--delete", action="store_true",
                     help="then delete the tagged duplicates (a dry run without --yes)")
    ded.add_argument("--yes", action="store_true", help="confirm --delete")
    ded.add_argument("--show-groups", type=at_least(0), default=10,
                     help="groups and outliers printed")
    ded.set_defaults(func=cmd_dedupe)


def cmd_dedupe(args):
    from lookalike.curation.dedupe import dedupe

    if args.yes and not args.delete:
        raise UsageError("--yes confirms --delete: give both")
    report = with_progress(dedupe, "deduplicating", source=args.directory,
                           dataset_name=args.dataset, encoder=args.encoder,
                           sample_size=args.sample_size, epochs=args.epochs)
    print(report.summary())
    curation = report.curation
    print(f"\nduplicate groups ({curation.duplicates.num_groups}):")
    _print_groups(curation.duplicates, args.show_groups)
    dataset = load_dataset(report.dataset_name)
    paths = dict(zip(*dataset.select(curation.outliers.outlier_ids).values(["id", "filepath"])))
    print(f"\nno-match outliers ({curation.outliers.num_outliers}), most isolated first:")
    _print_outliers(curation.outliers, paths, args.show_groups)
    if args.delete:
        args.dataset = report.dataset_name
        _delete_duplicates(dataset, args)
    print(f"\nreview them in the App: lookalike plugin install && fiftyone app launch "
          f"{report.dataset_name} (the Lookalike panel: + beside the grid's tabs)")
    return 0


def _add_curate(sub):
    from lookalike.curation import calibrate
    from lookalike.curation.keep import KEEP_POLICIES

    cur = sub.add_parser("curate", help="embed, index, calibrate, find duplicates and outliers")
    brain_args(cur, key_required=False)
    cur.add_argument("--encoder", default=None, help="encoder to embed with")
    cur.add_argument("--field", default=None, help="embeddings field (default emb_<encoder>)")
    cur.add_argument("--label-field", default=None, help="calibrate and evaluate with labels")
    cur.add_argument("--method", default=None, choices=calibrate.METHODS)
    cur.add_argument("--target", type=float, default=None,
                     help="precision target, isolated's k (default 2.5) or the outlier percentile")
    cur.add_argument("--keep", default="first", choices=KEEP_POLICIES)
    cur.add_argument("--duplicate-threshold", type=float, default=None)
    cur.add_argument("--outlier-threshold", type=float, default=None)
    cur.add_argument("--pngs", default=None, help="write the pictures (PNG) to this folder")
    cur.add_argument("--show-groups", type=at_least(0), default=10, help="groups and outliers printed")
    cur.set_defaults(func=cmd_curate)


def cmd_curate(args):
    from lookalike.curation import curate

    view = dataset_view(args)
    if not args.encoder and not args.field:
        raise UsageError("give --encoder NAME (to embed) or --field FIELD (embeddings already there)")
    report = with_progress(curate, "curating", samples=view, encoder=args.encoder,
                            embeddings_field=args.field, brain_key=args.brain_key,
                            label_field=args.label_field, method=args.method,
                            target=args.target, keep=args.keep,
                            duplicate_threshold=args.duplicate_threshold,
                            outlier_threshold=args.outlier_threshold, png_dir=args.pngs)
    print(report.summary())
    print(f"\nduplicate groups ({report.duplicates.num_groups}):")
    _print_groups(report.duplicates, args.show_groups)
    paths = dict(zip(*view.select(report.outliers.outlier_ids).values(["id", "filepath"])))
    print(f"\nno-match outliers ({report.outliers.num_outliers}), most isolated first:")
    _print_outliers(report.outliers, paths, args.show_groups)
    if report.evaluation:
        ev, k = report.evaluation, report.evaluation.k
        print(f"\nretrieval against '{args.label_field}': recall@1 {ev.recall_at_1:.3f}, "
              f"precision@{k} {ev.precision_at_k:.3f}, mAP@{k} {ev.map_at_k:.3f}")
    for path in report.pngs:
        print(f"wrote {path}")
    print("seconds per step: " + ", ".join(f"{k} {v}" for k, v in report.seconds.items()))
    return 0


def _add_calibrate(sub):
    from lookalike.curation import calibrate

    cal = sub.add_parser("calibrate", help="calibrate a run's distance thresholds")
    brain_args(cal)
    cal.add_argument("--label-field", default=None)
    cal.add_argument("--method", default=None, choices=calibrate.METHODS)
    cal.add_argument("--target", type=float, default=None)
    cal.add_argument("--unknown-fraction", type=float, default=0.2,
                     help="share of label classes held out as unknowns (0 = closed set)")
    cal.add_argument("--unknown-class", action="append", default=None,
                     help="a class to hold out as unknown (repeatable)")
    cal.set_defaults(func=cmd_calibrate)


def cmd_calibrate(args):
    from lookalike.curation import calibrate_threshold

    view = dataset_view(args)
    calibration = calibrate_threshold(view, args.brain_key, label_field=args.label_field,
                                      method=args.method, target=args.target,
                                      unknown_fraction=args.unknown_fraction,
                                      unknown_classes=args.unknown_class,
                                      progress=Progress("calibrating"))
    print(calibration.summary())
    return 0


# --verify of `duplicates`: find_duplicates' verify (see VERIFY_CHOICES in
# lookalike.curation.duplicate_pairs).
VERIFY_FLAGS = {"auto": "auto", "on": True, "off": False}


def _add_duplicates(sub):
    from lookalike.curation.keep import KEEP_POLICIES
    from lookalike.images.local_features import VERIFY_UP_TO
    from lookalike.similarity.engine import ENGINES
    from lookalike.similarity.pairs import APPROXIMATE_FROM

    dup = sub.add_parser("duplicates", help="group near-duplicates (or delete the tagged ones)")
    brain_args(dup, key_required=False)
    dup.add_argument("--threshold", type=float, default=None)
    dup.add_argument("--keep", default="first", choices=KEEP_POLICIES)
    dup.add_argument("--engine", default="auto", choices=ENGINES,
                     help=f"the pair search (auto: approximate from {APPROXIMATE_FROM:,} samples)")
    dup.add_argument("--verify", default="auto", choices=VERIFY_FLAGS,
                     help="geometric verification with local features (auto: on up to "
                          f"{VERIFY_UP_TO:,} samples)")
    dup.add_argument("--min-inliers", type=at_least(4), default=None,
                     help="inliers that verify a pair (default: the run's calibrated value)")
    dup.add_argument("--show-groups", type=at_least(0), default=10)
    dup.add_argument("--delete", action="store_true",
                     help="delete the samples tagged 'duplicate' (a dry run without --yes)")
    dup.add_argument("--yes", action="store_true", help="really delete (journaled first)")
    dup.set_defaults(func=cmd_duplicates)


def cmd_duplicates(args):
    from lookalike.curation import find_duplicates

    view = dataset_view(args)
    if args.delete:
        return _delete_duplicates(view, args)
    report = find_duplicates(view, args.brain_key, threshold=args.threshold, keep=args.keep,
                             engine=args.engine, verify=VERIFY_FLAGS[args.verify],
                             min_inliers=args.min_inliers,
                             progress=Progress("finding duplicates"))
    print(report.summary())
    _print_groups(report, args.show_groups)
    return 0


def _delete_duplicates(view, args):
    # The dry run and the real run follow one plan; the result words it (summary()).
    from lookalike.curation import delete_duplicates

    result = delete_duplicates(view, dry_run=not args.yes)
    text = result.summary(args.dataset)
    print(text + ("; add --yes to delete them" if result.dry_run else ""))
    return 0


def _add_leaks(sub):
    from lookalike.curation.leaks import SPLIT_TAGS
    from lookalike.images.local_features import VERIFY_UP_TO

    leak = sub.add_parser("leaks", help="tag samples with a duplicate in another split "
                          "(train / val / test): the same picture, or the same object seen again")
    brain_args(leak)
    which_splits = leak.add_mutually_exclusive_group()
    which_splits.add_argument("--splits", nargs="+", default=list(SPLIT_TAGS),
                              help="the split tags (default: %(default)s)")
    which_splits.add_argument("--split-field", default=None,
                              help="read each sample's split from this field instead of tags")
    leak.add_argument("--threshold", type=float, default=None)
    leak.add_argument("--verify", default="auto", choices=VERIFY_FLAGS,
                      help="geometric verification with local features (auto: on up to "
                           f"{VERIFY_UP_TO:,} samples)")
    leak.add_argument("--min-inliers", type=at_least(4), default=None,
                      help="inliers that verify a pair (default: the run's calibrated value)")
    leak.add_argument("--show", type=at_least(0), default=20, help="pairs to print")
    leak.set_defaults(func=cmd_leaks)


def cmd_leaks(args):
    from lookalike.curation import find_leaks

    splits = args.split_field or args.splits
    report = find_leaks(dataset_view(args), args.brain_key, splits=splits, threshold=args.threshold,
                        verify=VERIFY_FLAGS[args.verify], min_inliers=args.min_inliers,
                        progress=Progress("finding leaks"))
    print(report.summary())
    for a, b, reason in report.pairs[:args.show]:
        print(f"  {report.files.get(a, a)}  ~  {report.files.get(b, b)}  ({reason})")
    if len(report.pairs) > args.show:
        print(f"  ... and {len(report.pairs) - args.show} more pairs")
    return 0


def _add_undelete(sub):
    und = sub.add_parser("undelete", help="restore samples deleted by `duplicates --delete` "
                         "(without --last/--journal: list the journals)")
    und.add_argument("--dataset", required=True)
    which = und.add_mutually_exclusive_group()
    which.add_argument("--last", action="store_true", help="the newest journal not restored yet")
    which.add_argument("--journal", default=None, help="a journal file")
    und.set_defaults(func=cmd_undelete)


def cmd_undelete(args):
    from lookalike.curation import journal

    dataset = load_dataset(args.dataset)
    if not args.last and not args.journal:
        entries = journal.list_journals(dataset)
        if not entries:
            print(f"dataset '{dataset.name}' has no deletion journal")
        for e in entries:
            state = f"restored {e.restored_at}" if e.restored_at else "not restored"
            print(f"{e.path}  {e.num_samples} samples  {e.reason} {e.created_at}  {state}")
        return 0
    result = journal.restore(dataset, path=args.journal, last=args.last,
                             progress=Progress("undeleting"))
    print(f"restored {result.restored} samples from {result.path}"
          + (f" ({result.already_there} were still there)" if result.already_there else "")
          + (f"; each back in its place ({result.moved} samples behind them moved)"
             if result.moved else ""))
    return 0


def _add_outliers(sub):
    out = sub.add_parser("outliers", help="tag samples that match nothing else")
    brain_args(out)
    out.add_argument("--threshold", type=float, default=None)
    out.add_argument("--show", type=at_least(0), default=20)
    out.set_defaults(func=cmd_outliers)


def cmd_outliers(args):
    from lookalike.curation import flag_outliers

    view = dataset_view(args)
    report = flag_outliers(view, args.brain_key, threshold=args.threshold,
                           progress=Progress("finding outliers"))
    paths = dict(zip(*view.select(report.outlier_ids).values(["id", "filepath"])))
    print(f"{report.summary()} (tagged 'no_match'):")
    _print_outliers(report, paths, args.show)
    return 0


def _add_evaluate(sub):
    ev = sub.add_parser("evaluate", help="recall@1, precision@k, mAP@k and the confusion matrix")
    brain_args(ev)
    ev.add_argument("--label-field", required=True)
    ev.add_argument("-k", type=at_least(1), default=10)
    ev.set_defaults(func=cmd_evaluate)


def cmd_evaluate(args):
    from lookalike.curation import evaluate_retrieval

    ev = evaluate_retrieval(dataset_view(args), args.brain_key, args.label_field, k=args.k,
                            progress=Progress("evaluating"))
    k = ev.k
    print(f"recall@1 {ev.recall_at_1:.4f}  precision@{k} {ev.precision_at_k:.4f}  "
          f"mAP@{k} {ev.map_at_k:.4f}  ({ev.num_queries} queries)")
    if ev.confusion:
        conf = ev.confusion
        print(f"match / no match at {conf['threshold']:.4f}: accuracy {ev.match_accuracy:.4f}")
        width = max(len(c) for c in conf["classes"]) + 1
        print(" " * width + "".join(f"{c:>{width}}" for c in conf["classes"]))
        for c, row in zip(conf["classes"], conf["matrix"]):
            print(f"{c:>{width}}" + "".join(f"{v:>{width}}" for v in row))
    else:
        print(ev.confusion_note or "")
    return 0


def _add_figures(sub):
    fig = sub.add_parser("figures", help="write a run's calibration and evaluation pictures (PNG)")
    brain_args(fig, tag=False)
    fig.add_argument("--out", default=".", help="folder for the PNG files")
    fig.set_defaults(func=cmd_figures)


def cmd_figures(args):
    import lookalike.similarity as ls
    from lookalike.curation.figures import write_pngs

    index = ls.load_index(load_dataset(args.dataset), args.brain_key)
    with spinner("drawing"):
        paths = write_pngs(index, args.out)
    if not paths:
        raise UsageError(f"run '{args.brain_key}' has no calibration yet: run lookalike calibrate")
    for path in paths:
        print(f"wrote {path}")
    return 0


def _add_visualize(sub):
    from lookalike.curation import projection

    vis = sub.add_parser("visualize", help="2-D projection for the App's Embeddings panel")
    vis.add_argument("--dataset", required=True)
    vis.add_argument("--field", required=True)
    vis.add_argument("--brain-key", default=None, help="default <field>_<method>")
    vis.add_argument("--method", default="umap", choices=projection.METHODS)
    vis.add_argument("--tag", default=None)
    vis.set_defaults(func=cmd_visualize)


def cmd_visualize(args):
    from lookalike.curation import visualize_embeddings

    results = visualize_embeddings(dataset_view(args), args.field, brain_key=args.brain_key,
                                   method=args.method,
                                   progress=Progress("projecting"))
    print(f"visualization '{results.key}' of {len(results.points)} samples: open the App's "
          "Embeddings panel")
    return 0


def _print_groups(report, limit):
    for number, group in enumerate(report.groups[:limit], 1):
        print(f"  group {number} ({len(group)} images, kept first):")
        for sample_id in group:
            why = report.reasons.get(sample_id)
            print(f"    {report.files[sample_id]}" + (f"  ({why})" if why else ""))
    if report.num_groups > limit:
        print(f"  ... {report.num_groups - limit} more groups (--show-groups N)")
    shots = getattr(report, "shot_groups", None) or []
    if shots:
        print("other shots of one scene, not duplicates (tagged 'another_shot'):")
    for number, group in enumerate(shots[:limit], 1):
        print(f"  scene {number} ({len(group)} images):")
        for sample_id in group:
            why = report.shot_reasons.get(sample_id)
            print(f"    {report.files[sample_id]}" + (f"  ({why})" if why else ""))
    if len(shots) > limit:
        print(f"  ... {len(shots) - limit} more scenes (--show-groups N)")


def _print_outliers(report, paths, limit):
    for sample_id in report.outlier_ids[:limit]:
        print(f"  {report.distances[sample_id]:.4f}  {paths[sample_id]}")
    if report.num_outliers > limit:
        print(f"  ... {report.num_outliers - limit} more")
