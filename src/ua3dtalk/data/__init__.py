"""ua3dtalk.data (DESIGN §3)."""
