"""Files -> vectors -> an index directory on disk."""
