"""NVIDIA Triton beside our predictor in `make bench`: the same ONNX file, the same pixels.

`install` finds the tritonserver that PyPI's nvidia-pytriton wheel bundles (in its own venv,
made by `make triton`), `repository` writes a Triton model repository whose python-backend
`model.py` runs our ONNX repository's file with onnxruntime, `server` starts and stops
tritonserver on loopback, `pixels` sends decoded pixels to a V2 gRPC endpoint (ours or
Triton's), `compare` is the benchmark stage that measures both and `results` its records and
table.

Only `pixels` and `compare` import tritonclient.grpc: they must never share a process with
kserve (the driver's rule, see bench/load.py).
"""
