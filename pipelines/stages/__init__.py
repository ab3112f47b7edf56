"""One module per CLI command / DVC stage. Each defines ``register(subparsers)``, which adds
its sub-command and sets ``func`` to a ``main(args) -> int`` function."""
