import signal
import sys

from engine.cli import main


def _terminated(signum, frame):
    """SIGTERM (a timeout, a scheduler, ``kill``) unwinds like Ctrl-C: the ``finally`` blocks
    remove half-written outputs (a killed export left a 17 GB ``.partial``: a hostile pass)."""
    raise KeyboardInterrupt


signal.signal(signal.SIGTERM, _terminated)
sys.exit(main())
