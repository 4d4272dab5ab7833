"""Sinks: where job output lands for readers (partitioned S3 objects)."""
