"""scWorkbench engine: a plain Python library (no UI) behind the app and the command line.

Data flows one way: AnnData in -> ``preprocess`` recipe -> run -> results written back into
AnnData slots (``obsm['X_<model>']``, ``layers[...]``, ``obs[...]``, ``uns[...]``).
"""

from engine.errors import ScwbError

__all__ = ["ScwbError", "__version__"]
__version__ = "0.1.0"
