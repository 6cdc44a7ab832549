"""Running a model from a model repository: the engines (TorchScript, onnxruntime, OpenVINO) found
by the config's platform or backend, the forward thread they run on, and the process's thread
and allocator settings. Used by the predictor, the in-process batch job, the edge classifier and
the benchmark alike; it knows nothing of kserve or of servers.
"""
