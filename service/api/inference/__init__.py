"""Generated gRPC stubs for proto/ (tools/gen_protos.py); do not edit."""
