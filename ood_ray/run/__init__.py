"""Where a run writes, what it has done, who holds it, and how it commits."""
