"""Training runs with tracking: :mod:`.run` is the one typed path into the trainer (here, or
under torchrun through :mod:`.launch`)."""
