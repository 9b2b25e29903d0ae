"""ua3dtalk.callbacks (DESIGN §3)."""
