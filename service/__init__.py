"""The gRPC generation service: transport (servicer) -> validation -> ONNX runner -> response.

Entry points: `dcgan-serve` (service.server) and `dcgan-client` (service.client). Imports no torch.
"""
