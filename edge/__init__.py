"""The model on the device: classify images in-process with onnxruntime, no server, no torch.

    from edge import Classifier
    classifier = Classifier("model_repository-onnx")
    classifier.classify(open("photo.jpg", "rb").read(), top_k=3)
    # [Prediction(class_id=967, label='espresso', score=0.95), ...]

It reads the same model repository the servers serve (an ONNX model, FP32 or INT8, with its
labels.txt and preprocess.json) and runs the same code on the way: the domain's decoding,
preprocessing and top-k (`vision`, as the transformer runs them) and the runtime's onnxruntime
engine (as the predictor serves it). Install with `pip install .[edge]`; bad images raise
ValueError with the reason the servers give.
"""

from __future__ import annotations

from .classifier import Classifier, Prediction

__all__ = ["Classifier", "Prediction"]
