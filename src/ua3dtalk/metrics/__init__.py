"""ua3dtalk.metrics (DESIGN §3)."""
