"""The custom KServe predictor: serves the model a repository declares, with the engine its
config.pbtxt platform picks (runtime: ONNX Runtime or TorchScript), through the adaptive batcher."""
