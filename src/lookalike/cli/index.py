"""Embeddings and similarity indexes: ``lookalike features``, ``embed``, ``jobs``, ``index``
and ``search``."""

import sys

from lookalike.cli.arguments import at_least, load_dataset
from lookalike.cli.output import Progress, print_failures, with_progress
from lookalike.core.errors import UsageError


def add_commands(sub):
    """The group's commands, in the order of `lookalike --help`. Each _add_* imports the
    package's own constants for its choices (each validated where it is used), so that
    `import lookalike.cli` stays light."""
    _add_features(sub)
    _add_embed(sub)
    _add_jobs(sub)
    _add_index(sub)
    _add_search(sub)


def _delegation_args(parser):
    parser.add_argument("--delegate", action="store_true",
                        help="queue the work for `fiftyone delegated launch` workers instead of "
                        "running it here (prints the job ids)")
    parser.add_argument("--shards", type=at_least(1), default=1,
                        help="with --delegate: that many jobs over disjoint slices of the "
                        "samples")


def _add_features(sub):
    feat = sub.add_parser("features", help="cache the local features of geometric "
                          "verification ahead of time (on workers with --delegate --shards N)")
    feat.add_argument("--dataset", required=True)
    feat.add_argument("--tag", default=None, help="only samples with this tag")
    _delegation_args(feat)
    feat.set_defaults(func=cmd_features)


def cmd_features(args):
    view = load_dataset(args.dataset)
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

    report = cache_features(view, progress=Progress("local features"))
    print(f"local features of {report['images']} images cached"
          + (f"; {len(report['without'])} without features:" if report["without"] else ""))
    for path, why in report["without"].items():
        print(f"  {path}: {why}")
    return 0


def _add_embed(sub):
    emb = sub.add_parser("embed", help="embed a dataset's images into a vector field")
    emb.add_argument("--dataset", required=True)
    emb.add_argument("--encoder", required=True, help="encoder name or directory")
    emb.add_argument("--field", default=None, help="vector field (default emb_<encoder>)")
    emb.add_argument("--tag", default=None, help="only samples with this tag")
    emb.add_argument("--batch-size", type=at_least(1), default=64)
    emb.add_argument("--overwrite", action="store_true")
    emb.add_argument("--flip-average", action="store_true",
                     help="average each embedding with its mirror image's (a flipped copy gets "
                          "the same vector; twice the time; default field emb_<encoder>_flip)")
    _delegation_args(emb)
    emb.set_defaults(func=cmd_embed)


def cmd_embed(args):
    from lookalike.embeddings.compute import compute_embeddings

    view = load_dataset(args.dataset)
    if args.tag:
        view = view.match_tags(args.tag)
    if args.delegate:
        return _queue_shards(view, args)
    if args.shards != 1:
        raise UsageError("--shards runs on workers: add --delegate")
    report = compute_embeddings(view, args.encoder, args.field, batch_size=args.batch_size,
                                overwrite=args.overwrite, progress=Progress("embedding"),
                                flip_average=args.flip_average)
    print(report.summary())
    print_failures(report.failures)
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


def _add_jobs(sub):
    jobs = sub.add_parser("jobs", help="lookalike's delegated jobs and their workers; "
                          "--requeue ID puts back a job whose worker died")
    jobs.add_argument("--dataset", default=None)
    jobs.add_argument("--requeue", default=None, metavar="ID")
    jobs.set_defaults(func=cmd_jobs)


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


def _add_index(sub):
    from lookalike.similarity.engine import ENGINES

    idx = sub.add_parser("index", help="build a similarity index over an embeddings field")
    idx.add_argument("--dataset", required=True)
    idx.add_argument("--field", required=True)
    idx.add_argument("--brain-key", default=None, help="default <field>_sim")
    idx.add_argument("--engine", default="auto", choices=ENGINES)
    idx.add_argument("--nprobe", type=at_least(1), default=None,
                     help="approximate engine: lists searched per query (default: tuned)")
    idx.set_defaults(func=cmd_index)


def cmd_index(args):
    import lookalike.similarity as ls

    dataset = load_dataset(args.dataset)
    # build_index has no progress parameter yet: with_progress shows the elapsed time.
    index = with_progress(ls.build_index, "indexing", samples=dataset,
                           embeddings_field=args.field, brain_key=args.brain_key,
                           engine=args.engine, nprobe=args.nprobe)
    print(f"index '{index.key}' over '{args.field}': {index.total_index_size} samples"
          + (f", {index.num_missing} without an embedding left out" if index.num_missing else ""))
    return 0


def _add_search(sub):
    search = sub.add_parser("search", help="print the images most similar to a query")
    search.add_argument("--dataset", required=True)
    search.add_argument("--brain-key", required=True)
    search.add_argument("--image", default=None, help="a query image file")
    search.add_argument("--sample-id", action="append", default=None,
                        help="a query sample (repeat for the mean of several)")
    search.add_argument("-k", type=at_least(1), default=10)
    search.add_argument("--verify", action="store_true",
                        help="re-rank by local features: the same object seen again first")
    search.add_argument("--calibrated-by", default=None, metavar="KEY",
                        help="for another backend's run (LanceDB, Qdrant, ...): the lookalike "
                             "index over the same field whose thresholds decide duplicate / "
                             "match / new (default: the preferred one)")
    search.set_defaults(func=cmd_search)


def cmd_search(args):
    import lookalike.similarity as ls

    dataset = load_dataset(args.dataset)
    if not args.image and not args.sample_id:
        raise UsageError("give --image PATH or --sample-id ID")
    if args.image:
        from lookalike.images.decode import open_image

        open_image(args.image).close()  # a missing or broken file, before loading the encoder
    if args.brain_key in dataset.list_brain_runs() and not ls.is_ours(dataset, args.brain_key):
        return _search_other_backend(dataset, args)
    ids, dists = with_progress(ls.nearest, "searching", samples=dataset,
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
