"""``lookalike import``: a folder of images into a dataset."""

from lookalike.cli.output import Progress


def add_commands(sub):
    imp = sub.add_parser("import", help="import a folder of images into a dataset")
    imp.add_argument("--images", required=True, help="folder of images (searched recursively)")
    imp.add_argument("--dataset", required=True, help="name of the dataset to create")
    imp.add_argument("--no-recursive", action="store_true", help="do not descend into sub-folders")
    imp.add_argument("--overwrite", action="store_true", help="replace an existing dataset")
    imp.add_argument("--append", action="store_true", help="add to an existing dataset")
    imp.add_argument("--labels-from-folders", action="store_true",
                     help="store each image's sub-folder as its ground_truth label")
    imp.set_defaults(func=cmd_import)


def cmd_import(args):
    from lookalike.images.folder_import import import_images

    report = import_images(
        args.images,
        args.dataset,
        recursive=not args.no_recursive,
        overwrite=args.overwrite,
        append=args.append,
        labels_from_folders=args.labels_from_folders,
        progress=Progress("checking images"),
    )
    print(report.summary())
    return 0
