"""The encoders: ``lookalike train``, ``encoders``, ``load`` and ``stop``."""

from lookalike.cli.arguments import at_least
from lookalike.cli.output import Progress, print_failures
from lookalike.core.errors import UsageError


def add_commands(sub):
    """The group's commands, in the order of `lookalike --help`. Each _add_* imports the
    package's own constants for its choices (each validated where it is used), so that
    `import lookalike.cli` stays light."""
    _add_train(sub)
    _add_encoders(sub)
    _add_load(sub)


def add_stop_command(sub):
    """``stop``: listed after the dataset commands in `lookalike --help`."""
    _add_stop(sub)


def _add_train(sub):
    from lookalike.encoders import KINDS, autoencoder, contrastive, metric

    train = sub.add_parser("train", help="train an encoder on a dataset's images")
    train.add_argument("--dataset", required=True)
    train.add_argument("--kind", required=True, choices=KINDS)
    train.add_argument("--name", required=True, help="name of the encoder in the model store")
    train.add_argument("--label-field", default=None, help="Classification field (metric only)")
    train.add_argument("--tag", default=None, help="train only on samples with this tag")
    train.add_argument("--epochs", type=at_least(1), default=10)
    train.add_argument("--image-size", type=at_least(1), default=None)
    train.add_argument("--batch-size", type=at_least(1), default=None)
    train.add_argument("--embedding-size", type=at_least(1), default=None,
                       help="metric/contrastive")
    train.add_argument("--loss", default=None, help=f"metric: {'|'.join(metric.LOSSES)}; "
                       f"contrastive: {'|'.join(contrastive.LOSSES)}")
    train.add_argument("--width", type=float, default=None, help="autoencoder channel multiplier")
    train.add_argument("--embedding", default=None,
                       help=f"autoencoder: {'|'.join(autoencoder.EMBEDDINGS)}")
    train.add_argument("--learning-rate", type=float, default=None)
    train.add_argument("--overwrite", action="store_true")
    train.set_defaults(func=cmd_train)


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
    bar = Progress(f"training {args.name}")
    try:
        result = train_encoder(view, args.kind, args.name, image_size=args.image_size,
                               epochs=args.epochs, batch_size=args.batch_size,
                               label_field=args.label_field, overwrite=args.overwrite,
                               progress=bar, **extra)
    finally:
        bar.close()  # early stopping ends the run before the bar is full
    print(f"saved {result.summary()}\n  {result.path}")
    print_failures(result.failures)
    return 0


def _add_encoders(sub):
    enc = sub.add_parser("encoders", help="list the saved encoders")
    enc.set_defaults(func=cmd_encoders)


def cmd_encoders(args):
    from lookalike.encoders import default_store_dir, describe, list_encoders

    manifests = list_encoders()
    if not manifests:
        print(f"no encoders in {default_store_dir()}")
    for m in manifests:
        print(f"{describe(m)}\n  {m['path']}")
    return 0


def _add_load(sub):
    from lookalike.encoders import MODEL_FORMATS
    from lookalike.encoders.foreign import NORMALIZATIONS

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


def cmd_load(args):
    from lookalike.encoders import describe, import_model, read_manifest

    result = import_model(args.path, name=args.name, format=args.format,
                          image_size=args.image_size, normalization=args.normalize,
                          output=args.output, overwrite=args.overwrite)
    print(f"loaded {describe(read_manifest(result.path))}\n  {result.path}")
    if result.note:
        print(f"  {result.note}")
    return 0


def _add_stop(sub):
    stop = sub.add_parser("stop", help="stop a running training job after its current epoch")
    stop.add_argument("name")
    stop.set_defaults(func=cmd_stop)


def cmd_stop(args):
    from lookalike.encoders import request_stop

    print(f"asked '{args.name}' to stop after its current epoch ({request_stop(args.name)})")
    return 0
