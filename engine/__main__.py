import signal
import sys

from engine import cli
from engine.cli import main


def _terminated(signum, frame):
    """SIGTERM (a timeout, a scheduler, ``kill``) unwinds like Ctrl-C: the ``finally`` blocks
    remove half-written outputs (a killed export left a 17 GB ``.partial``: a hostile pass).
    Lightning turns the interrupt into ``sys.exit(1)`` during a fit: ``cli.TERMINATED`` lets
    ``train`` record that end as a stop, not as 'SystemExit: 1' (a review)."""
    cli.TERMINATED = True
    raise KeyboardInterrupt


signal.signal(signal.SIGTERM, _terminated)
sys.exit(main())
