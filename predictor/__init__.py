"""The custom KServe predictor: runs a TorchScript image classifier from a model repository."""
