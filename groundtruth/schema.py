"""The tables predictions and labels live in, one SQLAlchemy metadata for batch and online.

    predictions         python -m batch: one row per (image_key, model_name, model_version)
    served_predictions  the transformer's prediction log: one row per image of an answered
                        request, (model_name, request_id, image_index); the same columns as
                        predictions where they overlap (sha256, model_version, class_id,
                        label, score, top_k, created_at), plus the label joined to it
    labels              the true classes, one row per subject: a request's image
                        ("id:<request id>#<index>"), an image's content ("sha256:<hex>") or a
                        batch image key ("key:<image key>"); a later label of the same subject
                        replaces the earlier one

Online rows carry their label once joined (label_class_id, label_source, labelled_at,
outcome): that join happens exactly once per row whichever replica makes it, and the accuracy
report aggregates the rows in SQL. Batch rows are joined with labels when a report is made.
Never an image's bytes: its SHA-256 stands for it.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

metadata = sa.MetaData()

# Outcome of a labelled prediction: the label is the top-1 class, in the top 5 but not first,
# or not in the top 5 (mutually exclusive, so top-5 accuracy is top1 + top5 over all three).
TOP1, TOP5, WRONG = "top1", "top5", "wrong"
OUTCOMES = (TOP1, TOP5, WRONG)
LOGGED_TOP_K = 5  # classes kept per logged prediction, whatever top_k the client asked for

# Where a joined label came from: a label for the request's image wins over one for its content.
BY_ID, BY_SHA256, BY_KEY = "id", "sha256", "key"


def _prediction_columns() -> list[sa.Column[Any]]:
    """The columns batch and online predictions share, same names and types."""
    return [
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("class_id", sa.Integer, nullable=False),  # top-1
        sa.Column("label", sa.Text, nullable=False),  # top-1 class name
        sa.Column("score", sa.Float, nullable=False),  # top-1 softmax score
        sa.Column("top_k", sa.JSON, nullable=False),  # [{"class_id", "label", "score"}, ...]
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    ]


def image_and_model() -> list[sa.Column[Any]]:
    """The primary key of the batch tables (predictions, batch_errors): one row per image and
    model version."""
    return [
        sa.Column("image_key", sa.String(1024), primary_key=True),
        sa.Column("model_name", sa.String(255), primary_key=True),
        sa.Column("model_version", sa.String(64), primary_key=True),
    ]


predictions = sa.Table("predictions", metadata, *image_and_model(), *_prediction_columns())
sa.Index("predictions_sha256", predictions.c.sha256)

served_predictions = sa.Table(
    "served_predictions",
    metadata,
    sa.Column("model_name", sa.String(255), primary_key=True),
    sa.Column("request_id", sa.String(128), primary_key=True),
    sa.Column("image_index", sa.Integer, primary_key=True),
    sa.Column("model_version", sa.String(64), nullable=False),
    *_prediction_columns(),
    sa.Column("label_class_id", sa.Integer),
    sa.Column("label_source", sa.String(8)),
    sa.Column("labelled_at", sa.DateTime(timezone=True)),
    sa.Column("outcome", sa.String(8)),
)
sa.Index("served_predictions_sha256", served_predictions.c.sha256)
sa.Index(
    "served_predictions_created",
    served_predictions.c.model_name,
    served_predictions.c.created_at,
)

labels = sa.Table(
    "labels",
    metadata,
    sa.Column("subject", sa.String(1100), primary_key=True),
    sa.Column("source", sa.String(8), nullable=False),  # BY_ID, BY_SHA256 or BY_KEY
    sa.Column("model_name", sa.String(255)),  # BY_ID: the model the request went to
    sa.Column("request_id", sa.String(128)),
    sa.Column("image_index", sa.Integer),
    sa.Column("sha256", sa.String(64)),
    sa.Column("image_key", sa.String(1024)),
    sa.Column("class_id", sa.Integer, nullable=False),
    sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
)
sa.Index("labels_request", labels.c.request_id)
sa.Index("labels_sha256", labels.c.sha256)
sa.Index("labels_image_key", labels.c.image_key)
