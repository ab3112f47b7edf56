"""Data: annotations and the demo generator, importers for the official datasets, validation,
video decoding in worker processes with timeouts, and frame extraction into frame stores."""
