"""Process reward models: formats (what text a PRM reads and where it is scored) and the
incremental scorer with its own paged KV pool."""

from ponder.prm.formats import FORMATS, PrmFormat
from ponder.prm.scorer import PrmNode, PrmScorer

__all__ = ["FORMATS", "PrmFormat", "PrmNode", "PrmScorer"]
