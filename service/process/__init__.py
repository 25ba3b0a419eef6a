"""The process: settings, start-up and teardown, TLS and tokens, several processes."""
