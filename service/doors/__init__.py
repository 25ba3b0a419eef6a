"""The doors: each API converts its messages to and from the data plane's, inside the edge."""
