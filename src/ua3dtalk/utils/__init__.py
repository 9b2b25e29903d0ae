"""Small shared utilities (atomic file writes, video writing)."""
