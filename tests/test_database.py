"""The test database is a real, isolated MongoDB."""

import os

import fiftyone as fo
import fiftyone.core.odm.database as fod

from lookalike.core.database import bundled_mongod_path, ensure_mongod, mongod_version


def test_tests_run_on_their_own_database():
    uri = os.environ["FIFTYONE_DATABASE_URI"]
    assert fo.config.database_uri == uri
    assert uri.startswith("mongodb://127.0.0.1:") or os.environ.get("FIFTYONE_DATABASE_NAME")
    # A real server answers, and it is not a FiftyOne-managed service.
    info = fod.get_db_client().server_info()
    assert int(info["version"].split(".")[0]) >= 6


def test_dataset_round_trip_on_real_database(dataset_name):
    ds = fo.Dataset(dataset_name)
    ds.add_sample(fo.Sample(filepath="/nonexistent/a.png", score=0.5))
    assert fo.load_dataset(dataset_name).first()["score"] == 0.5


def test_bundled_mongod_runs():
    if os.environ.get("FIFTYONE_DATABASE_NAME"):
        return  # running against the user's own MongoDB
    assert mongod_version(bundled_mongod_path()).startswith("6.")
    assert ensure_mongod(install=False).startswith("using your own MongoDB")  # URI is set


def test_mongodb_version_warning_is_filtered(caplog):
    import logging

    logger = logging.getLogger("fiftyone.core.odm.database")
    with caplog.at_level(logging.WARNING, logger="fiftyone.core.odm.database"):
        logger.warning("You are running the oldest supported major version of MongoDB. x")
        logger.warning("something else")
    messages = [r.getMessage() for r in caplog.records]
    assert messages == ["something else"]
