"""The deploy wing: export a trained detector to a file, check it, and run it (ONNX Runtime, torch.export)."""
