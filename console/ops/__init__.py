"""Operator views' readers: the stack's status, Kafka, the dead letters, Cassandra."""

# How long an operator view waits on Kafka or Cassandra before it says the service is down.
TIMEOUT_S = 5.0
