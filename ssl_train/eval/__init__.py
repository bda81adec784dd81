"""Evaluation of frozen encoders: offline linear probe."""
