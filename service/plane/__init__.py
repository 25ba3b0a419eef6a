"""The data plane: every door's requests resolved, checked, run and recorded once."""
