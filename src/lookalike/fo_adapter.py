"""The few private FiftyOne attributes lookalike needs, in one place, each with why.

FiftyOne's public API has no name for these; keeping them here means one file
to check on a FiftyOne upgrade.
"""


def root_dataset(samples):
    """The dataset under a view (or the dataset itself).

    Needed because brain runs, ``dataset.info`` records and leases belong to the
    dataset, while users hand us views. (``view._root_dataset``: private.)
    """
    return samples._root_dataset


def dataset_id(samples):
    """The database id of the dataset under ``samples``: stable across renames.

    Index artefacts, leases and deletion journals are keyed by it, so renaming a
    dataset keeps them. (``dataset._doc.id``: private.)
    """
    return str(root_dataset(samples)._doc.id)
