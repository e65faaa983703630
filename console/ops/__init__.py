"""Operator views' readers: the stack's status, Kafka, the dead letters, Cassandra."""
