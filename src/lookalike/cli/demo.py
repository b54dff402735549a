"""``lookalike demo``: the offline demo dataset, and the main job run on it."""

import time

from lookalike.cli.arguments import at_least


def add_commands(sub):
    demo = sub.add_parser("demo", help="build the offline demo dataset and run the main job")
    demo.add_argument("--dataset", default="lookalike-demo", help="dataset name")
    demo.add_argument("--data-dir", default=None,
                      help="where to write the images (default: $LOOKALIKE_DATA_DIR or "
                           "~/fiftyone/lookalike/demo)")
    demo.add_argument("--max-digits", type=at_least(1), default=None,
                      help="use only the first N of the 1,797 digits")
    demo.add_argument("--skip-training", action="store_true", help="only build the dataset")
    demo.add_argument("--retrain", action="store_true",
                      help="train the demo encoders again even if they exist")
    demo.add_argument("--quick", action="store_true",
                      help="tiny encoders and one epoch each (a smoke test of the whole job)")
    demo.set_defaults(func=cmd_demo)


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
