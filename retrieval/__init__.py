"""Everything that reads an index: search, re-ranking, duplicates, reports."""
