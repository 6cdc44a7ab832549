"""The custom KServe predictor: serves the model a repository declares, with the engine its
config.pbtxt platform or backend picks (runtime: ONNX Runtime, OpenVINO or TorchScript), through
the adaptive batcher."""
