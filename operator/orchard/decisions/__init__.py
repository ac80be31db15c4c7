"""Pure decisions: what an observed state means and what should happen next (no I/O)."""
