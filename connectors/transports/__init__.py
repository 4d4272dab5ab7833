"""Transports: the logs a job reads and writes (Kafka, in-memory), behind one contract (contract.py)."""
