"""The transformer's own Prometheus series: decoded images, input sizes, decode queue.

The request-level series (`transformer_requests_total`, ...) come from `common.metrics`; the
drift scores from `transformer.drift_metrics`. Time per stage is kserve's, recorded around the
hooks (by common.lean_grpc on its gRPC path): `request_preprocess_seconds` (decoding),
`request_predict_seconds` (the call to the predictor), `request_postprocess_seconds` (top-k),
each labelled `model_name`. README.md's "Metrics" table lists them all.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from common.metrics import BYTES_BUCKETS, PIXELS_BUCKETS

IMAGES_DECODED = Counter(
    "transformer_images_decoded",  # exported as transformer_images_decoded_total
    "Images decoded successfully, by file format (JPEG, PNG, WEBP, GIF, BMP, TIFF, MPO).",
    ["format"],
)
IMAGE_BYTES = Histogram(
    "transformer_image_bytes",
    "Size of each encoded image file received.",
    buckets=BYTES_BUCKETS,
)
IMAGE_PIXELS = Histogram(
    "transformer_image_pixels",
    "Width x height of each image received, before any resizing.",
    buckets=PIXELS_BUCKETS,
)
DECODE_QUEUE_DEPTH = Gauge(
    "transformer_decode_queue_depth",
    "Images handed to the decode pool and not finished yet (waiting or decoding).",
)
