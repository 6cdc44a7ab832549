"""The stock pattern, the benchmark's peer: a transformer and predictor written the way KServe's
documentation teaches (synchronous hooks, full Pillow decode, FP32 NCHW tensors between them).

Deliberately not tuned: it is the baseline the served pipeline is compared with. It serves the
same TorchScript artifact, labels and resize/crop/normalisation from the same model repository.
"""

PREDICTOR_INPUT = "input-0"
PREDICTOR_OUTPUT = "output-0"
