"""Rollout CLI for the image-classifier InferenceService: apply, status, canary, promote, rollback.

Talks to the cluster only through the official `kubernetes` client; see docs/rollout.md.
"""
