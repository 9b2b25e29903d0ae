"""ua3dtalk.preprocess (DESIGN §3)."""
