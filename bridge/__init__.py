"""The MQTT -> Kafka bridge: PUBACK each message only after Kafka confirmed it."""
