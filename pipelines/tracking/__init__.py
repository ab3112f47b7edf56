"""Tracking at the edges: MLflow runs and their outbox (:mod:`.runs`, :mod:`.outbox`), the
trainer's MLflow and TensorBoard callbacks, provenance tags, the registry's ``models:/`` URIs
and the registered pyfunc model."""
