"""ONE attempt: prepare → send → classify → peek → `Committed` | `Final` | `Outcome`.

What one attempt does is here and nowhere else: `runner.py` makes it (`AttemptRunner`),
`reading.py` reads the answer before the commit (a body whole, a stream to its peek's
verdict), `results.py` holds what it ends in.  The plan loop (`proxy/engine.py`) and
mid-stream recovery (`proxy/recovery.py`) both make their attempts with it.
"""

from hydrallm.proxy.attempt.results import Committed, Final, Labels, Outcome
from hydrallm.proxy.attempt.runner import AttemptRunner

__all__ = ["AttemptRunner", "Committed", "Final", "Labels", "Outcome"]
