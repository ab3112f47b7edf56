"""TempMe-STOP: TempMe token merging and STOP prompting on open_clip for text-to-video retrieval.

The library holds the model, losses, metrics, data and training code. It parses no command
lines, talks to no tracking server and has no side effects at import.
"""

__version__ = "0.1.0"
