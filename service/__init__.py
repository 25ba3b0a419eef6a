"""The generation service, imports no torch. A request's path: doors/ (transport and
messages) -> plane/ (the data plane: resolve, check, batch, run, record) -> onnxruntime;
process/ starts and stops it all. Beside them, what training shares: contract.py (the rules
and every value's canonical type), imaging.py, settings.py; and errors.py, client.py
(`dcgan-client`).
"""
