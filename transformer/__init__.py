"""The custom KServe transformer: decodes images, forwards pixels to the predictor over gRPC,
and turns logits into top-k classes. It imports no torch."""
