"""ua3dtalk.cli (DESIGN §3)."""
