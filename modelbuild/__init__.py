"""Offline model building: export (TorchScript, ONNX), INT8 quantisation with its fidelity gate,
conversion to OpenVINO IR, calibration and hold-out image sets, and the drift reference profile.

Runs before serving (`make model-repo`, `python -m modelbuild COMMAND`), never inside a server:
it writes the model repository the servers read. It depends on the image domain (`vision`) and
the engines (`runtime`), never on the servers.
"""
