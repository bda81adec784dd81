"""Datasets read from local files, view pipelines, and the Lightning datamodule."""
