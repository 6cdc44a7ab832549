"""Batch predictions into a SQL database: `python -m batch SOURCE --db URL`.

Classifies every image under SOURCE, through a running transformer (`--url`, V2 gRPC) or in
this process with the servers' own decoding and model runner (`--model_dir`), and upserts the
top-k predictions into a `predictions` table keyed by (image_key, model_name, model_version).
The job's state lives in the database, so a run killed at any point can simply be started again.
"""
