"""Kafka + Schema Registry interoperability with a client we did not write.

Uses confluent-kafka's Producer/Consumer with its AvroSerializer/AvroDeserializer
(fastavro underneath) against the broker and registry `engine dev` hosts.

    kafka_interop.py produce TOPIC SCHEMA_FILE < tickets.jsonl   # one Avro record per line
    kafka_interop.py consume TOPIC COUNT > tickets.jsonl          # decoded dicts, one per line

Reads KAFKA_BOOTSTRAP_SERVERS and KAFKA_SCHEMA_REGISTRY_URL. Exits non-zero on failure.
"""

import json
import os
import sys
import time

from confluent_kafka import Consumer, Producer
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext


def registry():
    return SchemaRegistryClient({"url": os.environ["KAFKA_SCHEMA_REGISTRY_URL"]})


def produce(topic, schema_file):
    with open(schema_file) as f:
        schema = f.read()
    serializer = AvroSerializer(registry(), schema)
    producer = Producer({"bootstrap.servers": os.environ["KAFKA_BOOTSTRAP_SERVERS"]})
    errors = []
    count = 0
    for line in sys.stdin:
        if not line.strip():
            continue
        ticket = json.loads(line)
        value = serializer(ticket, SerializationContext(topic, MessageField.VALUE))
        producer.produce(
            topic,
            key=ticket["ticket_id"].encode(),
            value=value,
            on_delivery=lambda err, _msg: err and errors.append(err),
        )
        count += 1
    producer.flush(30)
    if errors:
        sys.exit(f"delivery failed: {errors}")
    print(f"{count} produced", file=sys.stderr)


def consume(topic, count):
    deserializer = AvroDeserializer(registry())
    consumer = Consumer(
        {
            "bootstrap.servers": os.environ["KAFKA_BOOTSTRAP_SERVERS"],
            "group.id": f"python-interop-{time.time()}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    consumer.subscribe([topic])
    seen = 0
    deadline = time.time() + 60
    while seen < count and time.time() < deadline:
        msg = consumer.poll(0.5)
        if msg is None:
            continue
        if msg.error():
            sys.exit(f"consumer error: {msg.error()}")
        value = deserializer(msg.value(), SerializationContext(topic, MessageField.VALUE))
        print(json.dumps({"key": msg.key().decode() if msg.key() else None, "value": value}))
        seen += 1
    consumer.close()
    if seen < count:
        sys.exit(f"only {seen} of {count} records arrived")


if __name__ == "__main__":
    command = sys.argv[1]
    if command == "produce":
        produce(sys.argv[2], sys.argv[3])
    elif command == "consume":
        consume(sys.argv[2], int(sys.argv[3]))
    else:
        sys.exit(f"unknown command {command}")
