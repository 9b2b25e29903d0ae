"""ua3dtalk.models (DESIGN §3)."""
