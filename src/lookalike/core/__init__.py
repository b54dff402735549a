"""The ground floor: errors, progress, leases, fault points, paths, the bundled
MongoDB, the FiftyOne adapter (the only place that touches FiftyOne's internals), the
frameworks (the only place Paddle and TensorFlow are imported) and label fields.
Imports nothing else of lookalike."""
