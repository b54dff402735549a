"""The ``lookalike`` command line: ``lookalike demo``, ``import``, ``train``, ``curate``, ..."""

import argparse
import contextlib
import logging
import os
import sys
import threading
import time
import traceback


from lookalike.core import fo_adapter
from lookalike.core.errors import LookalikeError, TrainingStopped, UsageError, one_line


_OPEN_BARS = set()  # closed before an error line, which must start a line of its own


class _Progress:
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


@contextlib.contextmanager
def _spinner(desc):
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


def _results_only_on_stdout():
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


def _with_progress(fn, desc, **kwargs):
    """``fn(**kwargs)`` under a progress bar: fed by ``fn``'s ``progress`` parameter where it
    has one, else showing the elapsed time."""
    import inspect

    if "progress" in inspect.signature(fn).parameters:
        return fn(progress=_Progress(desc), **kwargs)
    with _spinner(desc):
        return fn(**kwargs)


def cmd_demo(args):
    from lookalike.demo.dataset import build_demo_dataset, summarize

    start = time.perf_counter()
    print("building the demo dataset from the images bundled with scikit-image and scikit-learn ...")
    dataset = build_demo_dataset(
        name=args.dataset, data_dir=args.data_dir, max_digits=args.max_digits
    )
    counts = summarize(dataset)
    print(f"\ndataset '{dataset.name}' ({time.perf_counter() - start:.1f} s)")
    print(f"  images on disk:        {dataset.info['lookalike_demo']['data_dir']}")
    print(f"  samples:               {counts['samples']}")
    print(f"  photos:                {counts['photos']} "
          f"({counts['photo_groups_with_copies']} originals with "
          f"{counts['planted_copies']} planted near-duplicate copies, "
          f"{counts['unique_photos']} photos without any copy)")
    print(f"  digits:                {counts['digits']} in {counts['digit_classes']} classes")
    print("  ground truth fields:   source, ground_truth, gt_group, gt_edit, gt_unique")
    if not args.skip_training:
        from lookalike.encoders import default_store_dir
        from lookalike.demo.steps import train_demo_encoders

        print(f"\nencoders (model store: {default_store_dir()}):")
        train_demo_encoders(dataset, quick=args.quick, retrain=args.retrain)
        from lookalike.demo.steps import copy_retrieval, embed_and_index_photos

        print("\nembeddings and similarity indexes (photos):")
        keys = embed_and_index_photos(dataset, quick=args.quick)
        print("\nnear-duplicate retrieval against the planted copies "
              "(share of each original's copies among its nearest neighbours):")
        for key in keys:
            recall, n = copy_retrieval(dataset, key)
            print(f"  {key}: {recall:.3f} over {n} originals")
        from lookalike.demo.steps import curate_digits, curate_photos

        print("\ncuration of the photos (label-free thresholds) against the demo's ground truth:")
        # The best index last: the dataset's tags, and so the App, show its results.
        for key in reversed(keys):
            curate_photos(dataset, key)
        print("\nmetric learning on the digits (TF Similarity's calibration, open set):")
        curate_digits(dataset, quick=args.quick)
        from lookalike.demo.steps import match_query_set

        print("\nthe query set held back from the dataset, matched against it:")
        match_query_set(dataset)
        print("\nin the App: the 'duplicate' and 'no_match' tags, fields dup_group, dup_distance, "
              "nn_distance, no_match")
    print("\nopen it in the FiftyOne App (then http://localhost:5151):")
    print(f"  lookalike plugin install && fiftyone app launch {dataset.name} --wait -1")
    from lookalike.app.plugin_install import checkout_root

    if checkout_root():
        print("  or, in this checkout: make app")
    return 0


def cmd_import(args):
    from lookalike.images.folder_import import import_images

    report = import_images(
        args.images,
        args.dataset,
        recursive=not args.no_recursive,
        overwrite=args.overwrite,
        append=args.append,
        labels_from_folders=args.labels_from_folders,
        progress=_Progress("checking images"),
    )
    print(report.summary())
    return 0


def cmd_train(args):
    import fiftyone as fo

    from lookalike.encoders import train_encoder

    if not fo.dataset_exists(args.dataset):
        raise UsageError(f"no dataset named '{args.dataset}'")
    view = fo.load_dataset(args.dataset)
    if args.tag:
        view = view.match_tags(args.tag)
    extra = {k: v for k, v in dict(
        learning_rate=args.learning_rate, embedding_size=args.embedding_size, loss=args.loss,
        width=args.width, embedding=args.embedding,
    ).items() if v is not None}
    # One bar: decoding, then one step per epoch, its label the epoch's loss and speed.
    bar = _Progress(f"training {args.name}")
    try:
        result = train_encoder(view, args.kind, args.name, image_size=args.image_size,
                               epochs=args.epochs, batch_size=args.batch_size,
                               label_field=args.label_field, overwrite=args.overwrite,
                               progress=bar, **extra)
    finally:
        bar.close()  # early stopping ends the run before the bar is full
    print(f"saved {result.summary()}\n  {result.path}")
    _print_failures(result.failures)
    return 0


def _print_failures(failures):
    for failure in failures:
        print(f"  skipped {failure.path}: {failure.reason}")


def cmd_encoders(args):
    from lookalike.encoders import default_store_dir, describe, list_encoders

    manifests = list_encoders()
    if not manifests:
        print(f"no encoders in {default_store_dir()}")
    for m in manifests:
        print(f"{describe(m)}\n  {m['path']}")
    return 0


def cmd_load(args):
    from lookalike.encoders import describe, import_model, read_manifest

    result = import_model(args.path, name=args.name, format=args.format,
                          image_size=args.image_size, normalization=args.normalize,
                          output=args.output, overwrite=args.overwrite)
    print(f"loaded {describe(read_manifest(result.path))}\n  {result.path}")
    if result.note:
        print(f"  {result.note}")
    return 0


def cmd_stop(args):
    from lookalike.encoders import request_stop

    print(f"asked '{args.name}' to stop after its current epoch ({request_stop(args.name)})")
    return 0


def cmd_plugin_install(args):
    from lookalike.app.plugin_install import install

    if args.dir is None:
        import fiftyone as fo

        args.dir = fo.config.plugins_dir
    target = install(args.dir)
    print(f"installed the @lookalike/similarity plugin in {target}")
    print(f"  use it with: FIFTYONE_PLUGINS_DIR={os.path.dirname(target)} fiftyone app launch")
    return 0


def cmd_register_backend(args):
    from lookalike.similarity.registration import env_hides_backend, write_brain_config

    path, changed = write_brain_config(args.config)
    print(f"{'registered' if changed else 'already registered'}: fiftyone-brain similarity "
          f"backend 'lookalike' in {path}")
    hidden = env_hides_backend()
    if hidden:
        print(f"warning: {hidden}", file=sys.stderr)
    return 0


def _load_dataset(name):
    import fiftyone as fo

    if not fo.dataset_exists(name):
        raise UsageError(f"no dataset named '{name}'")
    return fo.load_dataset(name)


def cmd_embed(args):
    from lookalike.embeddings.compute import compute_embeddings

    view = _load_dataset(args.dataset)
    if args.tag:
        view = view.match_tags(args.tag)
    if args.delegate:
        return _queue_shards(view, args)
    if args.shards != 1:
        raise UsageError("--shards runs on workers: add --delegate")
    report = compute_embeddings(view, args.encoder, args.field, batch_size=args.batch_size,
                                overwrite=args.overwrite, progress=_Progress("embedding"),
                                flip_average=args.flip_average)
    print(report.summary())
    _print_failures(report.failures)
    return 0


def _queue_shards(view, args):
    from lookalike.encoders import load_encoder
    from lookalike.embeddings.shards import queue_embeddings

    encoder = load_encoder(args.encoder, flip_average=args.flip_average)
    ids = queue_embeddings(view, encoder, args.field, shards=args.shards,
                           batch_size=args.batch_size, overwrite=args.overwrite)
    for op_id in ids:
        print(op_id)
    print(f"{len(ids)} embedding jobs in the queue (a shard queued already is kept, not queued "
          "twice): workers on any machine sharing this database run them (`fiftyone delegated "
          "launch`, `make worker`); `lookalike jobs` follows them", file=sys.stderr)
    return 0


def _delegation_args(parser):
    parser.add_argument("--delegate", action="store_true",
                        help="queue the work for `fiftyone delegated launch` workers instead of "
                        "running it here (prints the job ids)")
    parser.add_argument("--shards", type=_at_least(1), default=1,
                        help="with --delegate: that many jobs over disjoint slices of the "
                        "samples")


def cmd_features(args):
    view = _load_dataset(args.dataset)
    if args.tag:
        view = view.match_tags(args.tag)
    if args.delegate:
        from lookalike.embeddings.shards import queue_features

        ids = queue_features(view, shards=args.shards)
        for op_id in ids:
            print(op_id)
        print(f"{len(ids)} feature jobs in the queue (a shard queued already is kept); "
              "`lookalike jobs` follows them", file=sys.stderr)
        return 0
    if args.shards != 1:
        raise UsageError("--shards runs on workers: add --delegate")
    from lookalike.images.local_features import cache_features

    report = cache_features(view, progress=_Progress("local features"))
    print(f"local features of {report['images']} images cached"
          + (f"; {len(report['without'])} without features:" if report["without"] else ""))
    for path, why in report["without"].items():
        print(f"  {path}: {why}")
    return 0


def cmd_jobs(args):
    from lookalike.embeddings.shards import list_jobs, requeue

    if args.requeue:
        print(requeue(args.requeue))
        return 0
    rows = list_jobs(dataset_name=args.dataset)
    if not rows:
        print("no lookalike jobs in the queue", file=sys.stderr)
    for job in rows:
        print(job.line())
    return 0


def cmd_index(args):
    import lookalike.similarity as ls

    dataset = _load_dataset(args.dataset)
    # build_index has no progress parameter yet: _with_progress shows the elapsed time.
    index = _with_progress(ls.build_index, "indexing", samples=dataset,
                           embeddings_field=args.field, brain_key=args.brain_key,
                           engine=args.engine, nprobe=args.nprobe)
    print(f"index '{index.key}' over '{args.field}': {index.total_index_size} samples"
          + (f", {index.num_missing} without an embedding left out" if index.num_missing else ""))
    return 0


def cmd_search(args):
    import lookalike.similarity as ls

    dataset = _load_dataset(args.dataset)
    if not args.image and not args.sample_id:
        raise UsageError("give --image PATH or --sample-id ID")
    if args.image:
        from lookalike.images.decode import open_image

        open_image(args.image).close()  # a missing or broken file, before loading the encoder
    if args.brain_key in dataset.list_brain_runs() and not ls.is_ours(dataset, args.brain_key):
        return _search_other_backend(dataset, args)
    ids, dists = _with_progress(ls.nearest, "searching", samples=dataset,
                                brain_key=args.brain_key, query_ids=args.sample_id,
                                query_path=args.image, k=args.k)
    paths = dict(zip(*dataset.select(ids).values(["id", "filepath"])))
    if not args.verify:
        for sample_id, dist in zip(ids, dists):
            print(f"{dist:.4f}  {paths[sample_id]}")
        return 0
    if not args.image and len(args.sample_id) != 1:
        raise UsageError("--verify compares images: give --image or one --sample-id")
    query = args.image or dataset[args.sample_id[0]].filepath
    order, inliers = ls.verify_results(ls.load_index(dataset, args.brain_key), query,
                                       [paths[i] for i in ids])
    for n in order:
        print(f"{dists[n]:.4f}  {inliers[n]:4d} inliers  {paths[ids[n]]}")
    return 0


def _search_other_backend(dataset, args):
    """Another backend's run (LanceDB, Qdrant, ...): its neighbours, decided by our thresholds."""
    from lookalike.curation.other_backends import lookup

    found = lookup(dataset, args.brain_key, query_ids=args.sample_id, query_path=args.image,
                   k=args.k, calibrated_by=args.calibrated_by)
    paths = dict(zip(*dataset.select([n.sample_id for n in found]).values(["id", "filepath"])))
    for n in found:
        print(f"{n.distance:.4f}  {n.decision:<9}  {paths[n.sample_id]}")
    return 0


def _print_groups(report, limit):
    for number, group in enumerate(report.groups[:limit], 1):
        print(f"  group {number} ({len(group)} images, kept first):")
        for sample_id in group:
            why = report.reasons.get(sample_id)
            print(f"    {report.files[sample_id]}" + (f"  ({why})" if why else ""))
    if report.num_groups > limit:
        print(f"  ... {report.num_groups - limit} more groups (--show-groups N)")


def _print_outliers(report, paths, limit):
    for sample_id in report.outlier_ids[:limit]:
        print(f"  {report.distances[sample_id]:.4f}  {paths[sample_id]}")
    if report.num_outliers > limit:
        print(f"  ... {report.num_outliers - limit} more")


def _view(args):
    view = _load_dataset(args.dataset)
    if getattr(args, "tag", None):
        view = view.match_tags(args.tag)
    return view


def cmd_curate(args):
    from lookalike.curation import curate

    view = _view(args)
    if not args.encoder and not args.field:
        raise UsageError("give --encoder NAME (to embed) or --field FIELD (embeddings already there)")
    report = _with_progress(curate, "curating", samples=view, encoder=args.encoder,
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


def cmd_calibrate(args):
    from lookalike.curation import calibrate_threshold

    view = _view(args)
    calibration = calibrate_threshold(view, args.brain_key, label_field=args.label_field,
                                      method=args.method, target=args.target,
                                      unknown_fraction=args.unknown_fraction,
                                      unknown_classes=args.unknown_class,
                                      progress=_Progress("calibrating"))
    print(f"'{args.brain_key}' calibrated ({calibration.method}): no-match threshold "
          f"{calibration.threshold:.4f}; duplicate threshold "
          f"{calibration.duplicate_threshold:.4f}")
    print(f"  {calibration.note}")
    print(f"  duplicate threshold: {calibration.duplicate_rule}")
    if calibration.metric_values:
        print("  at the threshold: " + ", ".join(
            f"{k} {v:.3f}" for k, v in calibration.metric_values.items() if k != "thresholds"))
    if calibration.num_missing_labels:
        print(f"  {calibration.num_missing_labels} samples without a label were left out")
    return 0


# --verify of `duplicates`: find_duplicates' verify (see VERIFY_CHOICES there).
VERIFY_FLAGS = {"auto": "auto", "on": True, "off": False}


def cmd_duplicates(args):
    from lookalike.curation import find_duplicates

    view = _view(args)
    if args.delete:
        return _delete_duplicates(view, args)
    report = find_duplicates(view, args.brain_key, threshold=args.threshold, keep=args.keep,
                             engine=args.engine, verify=VERIFY_FLAGS[args.verify],
                             min_inliers=args.min_inliers,
                             progress=_Progress("finding duplicates"))
    print(report.summary())
    _print_groups(report, args.show_groups)
    return 0


def cmd_leaks(args):
    from lookalike.curation import find_leaks

    splits = args.split_field or args.splits
    report = find_leaks(_view(args), args.brain_key, splits=splits, threshold=args.threshold,
                        verify=VERIFY_FLAGS[args.verify], min_inliers=args.min_inliers,
                        progress=_Progress("finding leaks"))
    print(report.summary())
    for a, b, reason in report.pairs[:args.show]:
        print(f"  {report.files.get(a, a)}  ~  {report.files.get(b, b)}  ({reason})")
    if len(report.pairs) > args.show:
        print(f"  ... and {len(report.pairs) - args.show} more pairs")
    return 0


def _delete_duplicates(view, args):
    # The dry run and the real run follow one plan (deletion_plan).
    from lookalike.curation.duplicates import delete_planned, deletion_plan

    if args.yes:
        result = delete_planned(view)
        plan = result.plan
    else:
        plan = deletion_plan(view)
        plan.check(args.dataset)
    if plan.unexplained:
        print(f"left alone: {plan.unexplained} samples tagged 'duplicate' that no published "
              "find_duplicates group explains")
    if not args.yes:
        print(f"would delete {plan.count} samples tagged 'duplicate' from {plan.num_groups} "
              "groups (each keeps its kept sample); add --yes to delete them")
    elif result.journal:
        print(f"deleted {plan.count} samples tagged 'duplicate' from {plan.num_groups} groups "
              f"(their files are untouched); journal {result.journal}: undo with "
              f"`lookalike undelete --dataset {args.dataset} --last`")
    else:
        print("deleted 0 samples: no published duplicate group has tagged members")
    return 0


def cmd_undelete(args):
    from lookalike.curation import journal

    dataset = _load_dataset(args.dataset)
    if not args.last and not args.journal:
        entries = journal.list_journals(dataset)
        if not entries:
            print(f"dataset '{dataset.name}' has no deletion journal")
        for e in entries:
            state = f"restored {e.restored_at}" if e.restored_at else "not restored"
            print(f"{e.path}  {e.num_samples} samples  {e.reason} {e.created_at}  {state}")
        return 0
    result = journal.restore(dataset, path=args.journal, last=args.last)
    print(f"restored {result.restored} samples from {result.path}"
          + (f" ({result.already_there} were still there)" if result.already_there else ""))
    return 0


def cmd_outliers(args):
    from lookalike.curation import flag_outliers

    view = _view(args)
    report = flag_outliers(view, args.brain_key, threshold=args.threshold,
                           progress=_Progress("finding outliers"))
    paths = dict(zip(*view.select(report.outlier_ids).values(["id", "filepath"])))
    print(f"{report.num_outliers} of {report.num_searched} samples are farther than "
          f"{report.threshold:.4f} from any other (tagged 'no_match'):")
    _print_outliers(report, paths, args.show)
    return 0


def cmd_evaluate(args):
    from lookalike.curation import evaluate_retrieval

    ev = evaluate_retrieval(_view(args), args.brain_key, args.label_field, k=args.k,
                            progress=_Progress("evaluating"))
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


def cmd_figures(args):
    import lookalike.similarity as ls
    from lookalike.curation.figures import write_pngs

    index = ls.load_index(_load_dataset(args.dataset), args.brain_key)
    with _spinner("drawing"):
        paths = write_pngs(index, args.out)
    if not paths:
        raise UsageError(f"run '{args.brain_key}' has no calibration yet: run lookalike calibrate")
    for path in paths:
        print(f"wrote {path}")
    return 0


def cmd_match_labels(args):
    from lookalike.curation import match_labels

    report = match_labels(_view(args), args.brain_key, args.label_field,
                          pred_field=args.pred_field, strategy=args.strategy, k=args.k,
                          unlabelled_only=not args.all, progress=_Progress("matching"))
    print(report.summary())
    return 0


def cmd_match(args):
    from lookalike.curation import match_images

    view = _view(args)
    brain_key = args.brain_key or _only_run(view)
    out = args.out or f"lookalike-match-{time.strftime('%Y%m%d-%H%M%S')}.csv"
    report = match_images(view, brain_key, args.images, add=args.add,
                          label_field=args.label_field, out=out,
                          verify=False if args.no_verify else "auto",
                          progress=_Progress("matching"))
    width = max([len(r.file) for r in report.rows] + [4])
    for r in report.rows[:args.show]:
        nearest = os.path.basename(r.nearest_path) if r.nearest_path else "-"
        dist = f"{r.distance:.4f}" if r.distance is not None else "-"
        label = f"  label {r.label}" if r.label is not None else ""
        note = f"  ({r.note})" if r.verified else ""
        print(f"  {r.file:<{width}}  {r.decision:<9}  {dist}  {nearest}{label}{note}")
    if len(report.rows) > args.show:
        print(f"  ... {len(report.rows) - args.show} more in {out}")
    _print_failures(report.unreadable)
    print(report.summary())
    print(f"table: {out}")
    return 0


def _only_run(samples):
    import lookalike.similarity as ls

    keys = ls.our_brain_keys(fo_adapter.root_dataset(samples))
    if len(keys) != 1:
        raise UsageError(f"give --brain-key (lookalike indexes: {', '.join(keys) or 'none'})")
    return keys[0]


def cmd_visualize(args):
    from lookalike.curation import visualize_embeddings

    results = visualize_embeddings(_view(args), args.field, brain_key=args.brain_key,
                                   method=args.method,
                                   progress=_Progress("projecting"))
    print(f"visualization '{results.key}' of {len(results.points)} samples: open the App's "
          "Embeddings panel")
    return 0


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


def _at_least(minimum):
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


def build_parser():
    # The choices are the package's own constants (each validated where it is used).
    from lookalike.curation import calibrate, match, projection
    from lookalike.curation.keep import KEEP_POLICIES
    from lookalike.curation.leaks import SPLIT_TAGS
    from lookalike.encoders import KINDS, MODEL_FORMATS, autoencoder, contrastive, metric
    from lookalike.encoders.foreign import NORMALIZATIONS
    from lookalike.similarity.engine import ENGINES
    from lookalike.similarity.pairs import APPROXIMATE_FROM
    from lookalike.images.local_features import VERIFY_UP_TO

    parser = _CommandParser(
        prog="lookalike",
        description="Visual similarity search and curation for FiftyOne datasets.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="build the offline demo dataset and run the main job")
    demo.add_argument("--dataset", default="lookalike-demo", help="dataset name")
    demo.add_argument("--data-dir", default=None,
                      help="where to write the images (default: $LOOKALIKE_DATA_DIR or "
                           "~/fiftyone/lookalike/demo)")
    demo.add_argument("--max-digits", type=_at_least(1), default=None,
                      help="use only the first N of the 1,797 digits")
    demo.add_argument("--skip-training", action="store_true", help="only build the dataset")
    demo.add_argument("--retrain", action="store_true",
                      help="train the demo encoders again even if they exist")
    demo.add_argument("--quick", action="store_true",
                      help="tiny encoders and one epoch each (a smoke test of the whole job)")
    demo.set_defaults(func=cmd_demo)

    imp = sub.add_parser("import", help="import a folder of images into a dataset")
    imp.add_argument("--images", required=True, help="folder of images (searched recursively)")
    imp.add_argument("--dataset", required=True, help="name of the dataset to create")
    imp.add_argument("--no-recursive", action="store_true", help="do not descend into sub-folders")
    imp.add_argument("--overwrite", action="store_true", help="replace an existing dataset")
    imp.add_argument("--append", action="store_true", help="add to an existing dataset")
    imp.add_argument("--labels-from-folders", action="store_true",
                     help="store each image's sub-folder as its ground_truth label")
    imp.set_defaults(func=cmd_import)

    train = sub.add_parser("train", help="train an encoder on a dataset's images")
    train.add_argument("--dataset", required=True)
    train.add_argument("--kind", required=True, choices=KINDS)
    train.add_argument("--name", required=True, help="name of the encoder in the model store")
    train.add_argument("--label-field", default=None, help="Classification field (metric only)")
    train.add_argument("--tag", default=None, help="train only on samples with this tag")
    train.add_argument("--epochs", type=_at_least(1), default=10)
    train.add_argument("--image-size", type=_at_least(1), default=None)
    train.add_argument("--batch-size", type=_at_least(1), default=None)
    train.add_argument("--embedding-size", type=_at_least(1), default=None,
                       help="metric/contrastive")
    train.add_argument("--loss", default=None, help=f"metric: {'|'.join(metric.LOSSES)}; "
                       f"contrastive: {'|'.join(contrastive.LOSSES)}")
    train.add_argument("--width", type=float, default=None, help="autoencoder channel multiplier")
    train.add_argument("--embedding", default=None,
                       help=f"autoencoder: {'|'.join(autoencoder.EMBEDDINGS)}")
    train.add_argument("--learning-rate", type=float, default=None)
    train.add_argument("--overwrite", action="store_true")
    train.set_defaults(func=cmd_train)

    enc = sub.add_parser("encoders", help="list the saved encoders")
    enc.set_defaults(func=cmd_encoders)

    load = sub.add_parser("load", help="add an encoder to the store: a lookalike encoder "
                          "folder, a Paddle Inference export folder or a .keras file")
    load.add_argument("--path", required=True)
    load.add_argument("--name", default=None, help="store name (required for other formats)")
    load.add_argument("--format", default="auto", choices=MODEL_FORMATS)
    load.add_argument("--image-size", type=int, default=None,
                      help="the model's input size in pixels (Paddle Inference: required)")
    load.add_argument("--normalize", default=None, choices=NORMALIZATIONS,
                      help="input normalisation (default: imagenet for Paddle Inference, "
                      "none for Keras)")
    load.add_argument("--output", default=None, help="Paddle Inference output tensor "
                      "(default: the first)")
    load.add_argument("--overwrite", action="store_true")
    load.set_defaults(func=cmd_load)

    feat = sub.add_parser("features", help="cache the local features of geometric "
                          "verification ahead of time (on workers with --delegate --shards N)")
    feat.add_argument("--dataset", required=True)
    feat.add_argument("--tag", default=None, help="only samples with this tag")
    _delegation_args(feat)
    feat.set_defaults(func=cmd_features)

    emb = sub.add_parser("embed", help="embed a dataset's images into a vector field")
    emb.add_argument("--dataset", required=True)
    emb.add_argument("--encoder", required=True, help="encoder name or directory")
    emb.add_argument("--field", default=None, help="vector field (default emb_<encoder>)")
    emb.add_argument("--tag", default=None, help="only samples with this tag")
    emb.add_argument("--batch-size", type=_at_least(1), default=64)
    emb.add_argument("--overwrite", action="store_true")
    emb.add_argument("--flip-average", action="store_true",
                     help="average each embedding with its mirror image's (a flipped copy gets "
                          "the same vector; twice the time; default field emb_<encoder>_flip)")
    _delegation_args(emb)
    emb.set_defaults(func=cmd_embed)

    jobs = sub.add_parser("jobs", help="lookalike's delegated jobs and their workers; "
                          "--requeue ID puts back a job whose worker died")
    jobs.add_argument("--dataset", default=None)
    jobs.add_argument("--requeue", default=None, metavar="ID")
    jobs.set_defaults(func=cmd_jobs)

    idx = sub.add_parser("index", help="build a similarity index over an embeddings field")
    idx.add_argument("--dataset", required=True)
    idx.add_argument("--field", required=True)
    idx.add_argument("--brain-key", default=None, help="default <field>_sim")
    idx.add_argument("--engine", default="auto", choices=ENGINES)
    idx.add_argument("--nprobe", type=_at_least(1), default=None,
                     help="approximate engine: lists searched per query (default: tuned)")
    idx.set_defaults(func=cmd_index)

    search = sub.add_parser("search", help="print the images most similar to a query")
    search.add_argument("--dataset", required=True)
    search.add_argument("--brain-key", required=True)
    search.add_argument("--image", default=None, help="a query image file")
    search.add_argument("--sample-id", action="append", default=None,
                        help="a query sample (repeat for the mean of several)")
    search.add_argument("-k", type=_at_least(1), default=10)
    search.add_argument("--verify", action="store_true",
                        help="re-rank by local features: the same object seen again first")
    search.add_argument("--calibrated-by", default=None, metavar="KEY",
                        help="for another backend's run (LanceDB, Qdrant, ...): the lookalike "
                             "index over the same field whose thresholds decide duplicate / "
                             "match / no match (default: the preferred one)")
    search.set_defaults(func=cmd_search)

    def brain_args(p, key_required=True, tag=True):
        p.add_argument("--dataset", required=True)
        p.add_argument("--brain-key", required=key_required, default=None,
                       help="a lookalike similarity run")
        if tag:
            p.add_argument("--tag", default=None, help="only samples with this tag")

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
    cur.add_argument("--show-groups", type=_at_least(0), default=10, help="groups and outliers printed")
    cur.set_defaults(func=cmd_curate)

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

    dup = sub.add_parser("duplicates", help="group near-duplicates (or delete the tagged ones)")
    brain_args(dup, key_required=False)
    dup.add_argument("--threshold", type=float, default=None)
    dup.add_argument("--keep", default="first", choices=KEEP_POLICIES)
    dup.add_argument("--engine", default="auto", choices=ENGINES,
                     help=f"the pair search (auto: approximate from {APPROXIMATE_FROM:,} samples)")
    dup.add_argument("--verify", default="auto", choices=VERIFY_FLAGS,
                     help="geometric verification with local features (auto: on up to "
                          f"{VERIFY_UP_TO:,} samples)")
    dup.add_argument("--min-inliers", type=_at_least(4), default=None,
                     help="inliers that verify a pair (default: the run's calibrated value)")
    dup.add_argument("--show-groups", type=_at_least(0), default=10)
    dup.add_argument("--delete", action="store_true",
                     help="delete the samples tagged 'duplicate' (a dry run without --yes)")
    dup.add_argument("--yes", action="store_true", help="really delete (journaled first)")
    dup.set_defaults(func=cmd_duplicates)

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
    leak.add_argument("--min-inliers", type=_at_least(4), default=None,
                      help="inliers that verify a pair (default: the run's calibrated value)")
    leak.add_argument("--show", type=_at_least(0), default=20, help="pairs to print")
    leak.set_defaults(func=cmd_leaks)

    und = sub.add_parser("undelete", help="restore samples deleted by `duplicates --delete` "
                         "(without --last/--journal: list the journals)")
    und.add_argument("--dataset", required=True)
    which = und.add_mutually_exclusive_group()
    which.add_argument("--last", action="store_true", help="the newest journal not restored yet")
    which.add_argument("--journal", default=None, help="a journal file")
    und.set_defaults(func=cmd_undelete)

    out = sub.add_parser("outliers", help="tag samples that match nothing else")
    brain_args(out)
    out.add_argument("--threshold", type=float, default=None)
    out.add_argument("--show", type=_at_least(0), default=20)
    out.set_defaults(func=cmd_outliers)

    ev = sub.add_parser("evaluate", help="recall@1, precision@k, mAP@k and the confusion matrix")
    brain_args(ev)
    ev.add_argument("--label-field", required=True)
    ev.add_argument("-k", type=_at_least(1), default=10)
    ev.set_defaults(func=cmd_evaluate)

    fig = sub.add_parser("figures", help="write a run's calibration and evaluation pictures (PNG)")
    brain_args(fig, tag=False)
    fig.add_argument("--out", default=".", help="folder for the PNG files")
    fig.set_defaults(func=cmd_figures)

    vis = sub.add_parser("visualize", help="2-D projection for the App's Embeddings panel")
    vis.add_argument("--dataset", required=True)
    vis.add_argument("--field", required=True)
    vis.add_argument("--brain-key", default=None, help="default <field>_<method>")
    vis.add_argument("--method", default="umap", choices=projection.METHODS)
    vis.add_argument("--tag", default=None)
    vis.set_defaults(func=cmd_visualize)

    ml = sub.add_parser("match-labels", help="label unlabelled samples from their nearest "
                                             "labelled ones, or 'no match'")
    brain_args(ml)
    ml.add_argument("--label-field", required=True)
    ml.add_argument("--pred-field", default=None, help="default <label field>_match")
    ml.add_argument("--strategy", default="nearest", choices=match.STRATEGIES)
    ml.add_argument("-k", type=_at_least(1), default=5,
                    help="neighbours that vote (--strategy vote)")
    ml.add_argument("--all", action="store_true", help="also re-predict labelled samples")
    ml.set_defaults(func=cmd_match_labels)

    mt = sub.add_parser("match", help="match a folder of new images: duplicate, match or new")
    brain_args(mt, key_required=False)
    mt.add_argument("--images", required=True, help="folder of images (searched recursively)")
    mt.add_argument("--add", default="none", choices=match.ADD_MODES,
                    help="import the new images (tagged with the batch), all, or none")
    mt.add_argument("--label-field", default=None,
                    help="predict this label (default: the calibration's)")
    mt.add_argument("--out", default=None,
                    help="the table (.csv or .json; default lookalike-match-<time>.csv)")
    mt.add_argument("--no-verify", action="store_true",
                    help="no geometric verification: beyond the duplicate threshold an image "
                         "is new")
    mt.add_argument("--show", type=_at_least(0), default=50, help="rows printed")
    mt.set_defaults(func=cmd_match)

    stop = sub.add_parser("stop", help="stop a running training job after its current epoch")
    stop.add_argument("name")
    stop.set_defaults(func=cmd_stop)

    plugin = sub.add_parser("plugin", help="put the FiftyOne plugin (only its files) into "
                                           "a plugins directory")
    plugin_sub = plugin.add_subparsers(dest="plugin_command", required=True)
    pinst = plugin_sub.add_parser("install", help="write <dir>/lookalike/")
    pinst.add_argument("--dir", default=None,
                       help="plugins directory (default: FiftyOne's plugins_dir, "
                            "FIFTYONE_PLUGINS_DIR)")
    pinst.set_defaults(func=cmd_plugin_install, needs_database=False)

    reg = sub.add_parser("register-backend",
                         help="add backend='lookalike' to fiftyone-brain's brain config file")
    reg.add_argument("--config", default=None,
                     help="brain config file (default: FIFTYONE_BRAIN_CONFIG_PATH or "
                          "~/.fiftyone/brain_config.json)")
    reg.set_defaults(func=cmd_register_backend, needs_database=False)
    return parser


def main(argv=None):
    """Runs one command; exit 0, or one line on stderr and 2 (our reason: bad input, an
    unusable environment), 3 (training stopped on request), 1 (a bug), 130 (Ctrl-C)."""
    args = build_parser().parse_args(argv)
    _results_only_on_stdout()
    from lookalike.core.database import ensure_mongod, quiet_mongodb_version_warning

    quiet_mongodb_version_warning()
    try:
        if getattr(args, "needs_database", True):
            ensure_mongod(install=False)
        return args.func(args)
    except TrainingStopped as e:
        return _fail(args, one_line(e), 3)
    except LookalikeError as e:
        return _fail(args, f"error: {one_line(e)}", 2)
    except KeyboardInterrupt:
        return _fail(args, "interrupted", 130)
    except Exception as e:  # a bug: one line, the traceback with --debug
        hint = "" if getattr(args, "debug", False) else " (run with --debug for the traceback)"
        return _fail(args, f"error: {type(e).__name__}: {one_line(e)}{hint}", 1)


def _fail(args, line, code):
    for bar in list(_OPEN_BARS):
        bar.close()
    sys.stdout.flush()
    if getattr(args, "debug", False):
        traceback.print_exc()
    print(f"lookalike {args.command}: {line}", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
