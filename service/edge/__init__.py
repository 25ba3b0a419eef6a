"""The edge: what every call of every door meets before and after its door (see call.py)."""
