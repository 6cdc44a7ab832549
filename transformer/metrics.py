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

# The prediction log and the labels joined to it (transformer.ground_truth, --prediction_log_db).
# Counters add up across replicas: each counts the rows it wrote and the labels it joined, so
# accuracy per version is sum(rate(...{outcome="top1"})) / sum(rate(...)) over all of them.
LOG_ROWS_WRITTEN = Counter(
    "transformer_prediction_log_rows_written",
    "Predictions (one per image) the database committed to the prediction log.",
)
LOG_ROWS_DROPPED = Counter(
    "transformer_prediction_log_rows_dropped",
    "Predictions never written to the log: the buffer was full (database slow or down) or "
    "the transformer stopped before the database took them.",
)
LOG_ROWS_PENDING = Gauge(
    "transformer_prediction_log_rows_pending",
    "Predictions waiting in the buffer to be written to the log.",
)
LABELS_RECEIVED = Counter(
    "transformer_labels_received",
    "Labels posted to this replica, by what they did at once: matched (a logged prediction) "
    "or pending (joined when the prediction is logged).",
    ["status"],
)
LABELLED_PREDICTIONS = Counter(
    "transformer_labelled_predictions",
    "Logged predictions given their first label, by model version and outcome: top1 (the "
    "label is the top class), top5 (in the top 5, not first), wrong. Each prediction is "
    "counted once, by the replica that joined it.",
    ["model_version", "outcome"],
)
LABEL_CORRECTIONS = Counter(
    "transformer_label_corrections",
    "Labelled predictions whose label was replaced by a later one (the accuracy report uses "
    "the latest; transformer_labelled_predictions_total keeps the first).",
    ["model_version"],
)
LABEL_DELAY = Histogram(
    "transformer_label_delay_seconds",
    "Time from a prediction to its first label (0 when the label came first).",
    ["model_version"],
    buckets=(
        1,
        10,
        60,
        300,
        900,
        3600,
        4 * 3600,
        12 * 3600,
        86400,
        3 * 86400,
        7 * 86400,
        30 * 86400,
    ),
)
