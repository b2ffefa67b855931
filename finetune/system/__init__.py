"""Operating-system plumbing every stage shares: atomic files, advisory locks, child processes."""
