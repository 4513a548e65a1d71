#!/usr/bin/env python3
"""Drives our Schema Registry server with Confluent's own Python client.

Proves that a client we did not write (confluent-kafka's SchemaRegistryClient,
AvroSerializer and AvroDeserializer, with fastavro) works against the server.

Environment:
  SCHEMA_REGISTRY_URL  server base URL, e.g. http://127.0.0.1:8081 (required)
  TICKET_SCHEMA        path of execution-ticket.avsc
                       (default: schemas/execution-ticket/execution-ticket.avsc of this repository)

Exits 0 when every check passes, 1 on the first mismatch, 2 when a module is missing.
"""

import copy
import json
import os
import struct
import sys

try:
    from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
    from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
    from confluent_kafka.schema_registry.error import SchemaRegistryError
    from confluent_kafka.serialization import MessageField, SerializationContext
    import fastavro  # noqa: F401  (AvroSerializer needs it; import early for a clear error)
except ImportError as e:  # pragma: no cover
    print(f"MISSING-MODULE: {e}", file=sys.stderr)
    sys.exit(2)

CHECKS = 0


def check(condition, what):
    global CHECKS
    CHECKS += 1
    if not condition:
        print(f"FAIL: {what}", file=sys.stderr)
        sys.exit(1)
    print(f"ok: {what}")


def expect_error(fn, code, what):
    try:
        fn()
    except SchemaRegistryError as e:
        check(e.error_code == code, f"{what}: error_code {e.error_code} == {code} ({e.error_message})")
        return e
    check(False, f"{what}: expected SchemaRegistryError {code}, got success")


def main():
    url = os.environ.get("SCHEMA_REGISTRY_URL")
    if not url:
        print("FAIL: set SCHEMA_REGISTRY_URL", file=sys.stderr)
        sys.exit(1)
    schema_path = os.environ.get(
        "TICKET_SCHEMA",
        os.path.join(os.path.dirname(__file__), "..", "..", "..", "schemas", "execution-ticket", "execution-ticket.avsc"),
    )
    with open(schema_path, encoding="utf-8") as f:
        ticket_text = f.read()
    ticket_json = json.loads(ticket_text)

    client = SchemaRegistryClient({"url": url})
    subject = "execution-tickets-value"

    # Register and read back.
    schema_id = client.register_schema(subject, Schema(ticket_text, "AVRO"))
    check(isinstance(schema_id, int) and schema_id > 0, f"register returned id {schema_id}")
    fetched = client.get_schema(schema_id)
    check(fetched.schema_type in (None, "AVRO"), f"schema type {fetched.schema_type}")
    check(json.loads(fetched.schema_str) == ticket_json, "schema by id equals the registered schema")

    # A second client (no cache) sees the same id, in this and in another subject.
    fresh = SchemaRegistryClient({"url": url})
    again = fresh.register_schema(subject, Schema(ticket_text, "AVRO"))
    check(again == schema_id, f"re-registering returns the same id ({again})")
    other = fresh.register_schema("other-subject", Schema(json.dumps(ticket_json), "AVRO"))
    check(other == schema_id, f"same schema in another subject has the same id ({other})")

    found = fresh.lookup_schema(subject, Schema(ticket_text, "AVRO"))
    check(found.schema_id == schema_id and found.version == 1, f"lookup -> id {found.schema_id} v{found.version}")
    latest = fresh.get_latest_version(subject)
    check(latest.schema_id == schema_id and latest.version == 1, "latest version is v1")
    check(fresh.get_versions(subject) == [1], "versions == [1]")
    check(subject in fresh.get_subjects(), "subject listed")
    v1 = fresh.get_version(subject, 1)
    check(json.loads(v1.schema.schema_str) == ticket_json, "version 1 schema matches")

    # Serialize with auto-registration, then deserialize with a fresh client.
    ticket = {
        "ticket_id": "t-1",
        "plan_id": "p-1",
        "intent_id": "i-1",
        "decision_id": "d-1",
        "correlation_id": "c-1",
        "trace_id": None,
        "span_id": None,
        "task_id": "task-1",
        "task_type": "DEPLOY",
        "description": "deploy the thing",
        "dependencies": ["task-0"],
        "status": "RUNNING",
        "priority": "HIGH",
        "risk_band": "medium",
        "sla": {"deadline": 1700000000000, "timeout_ms": 30000, "max_retries": 3},
        "qos": {"delivery_mode": "EXACTLY_ONCE", "consistency": "STRONG", "durability": "PERSISTENT"},
        "parameters": {"region": "eu"},
        "required_capabilities": ["k8s"],
        "security_level": "INTERNAL",
        "created_at": 1700000000000,
        "started_at": 1700000001000,
        "completed_at": None,
        "estimated_duration_ms": 5000,
        "actual_duration_ms": None,
        "retry_count": 0,
        "error_message": None,
        "compensation_ticket_id": None,
        "metadata": {"k": "v"},
        "schema_version": 1,
    }
    topic = "tickets"
    serializer = AvroSerializer(client, ticket_text, conf={"auto.register.schemas": True})
    ctx = SerializationContext(topic, MessageField.VALUE)
    payload = serializer(copy.deepcopy(ticket), ctx)
    check(payload[0] == 0, "Confluent wire format magic byte 0")
    wire_id = struct.unpack(">I", payload[1:5])[0]
    check(wire_id == schema_id, f"serializer auto-registered under {topic}-value with the global id {wire_id}")
    check(f"{topic}-value" in fresh.get_subjects(), "auto-registered subject listed")

    deserializer = AvroDeserializer(SchemaRegistryClient({"url": url}))
    decoded = deserializer(payload, ctx)
    check(decoded == ticket, "deserialized ticket equals the original")

    # Compatibility of an evolved schema.
    evolved = copy.deepcopy(ticket_json)
    evolved["fields"].append({"name": "owner", "type": ["null", "string"], "default": None})
    evolved_text = json.dumps(evolved)
    check(fresh.test_compatibility(subject, Schema(evolved_text, "AVRO")), "optional field with default is compatible")
    broken = copy.deepcopy(ticket_json)
    broken["fields"].append({"name": "owner", "type": "string"})
    broken_text = json.dumps(broken)
    check(not fresh.test_compatibility(subject, Schema(broken_text, "AVRO")), "required new field is incompatible")
    check(not fresh.test_compatibility(subject, Schema(broken_text, "AVRO"), version=1, verbose=True),
          "required new field is incompatible with version 1 (verbose)")
    e = expect_error(lambda: fresh.register_schema(subject, Schema(broken_text, "AVRO")), 409,
                     "registering an incompatible schema")
    check(e.http_status_code == 409, "incompatible -> HTTP 409")
    evolved_id = fresh.register_schema(subject, Schema(evolved_text, "AVRO"))
    check(evolved_id != schema_id, f"evolved schema gets a new id ({evolved_id})")
    # A new client, because SchemaRegistryClient caches the latest version.
    check(SchemaRegistryClient({"url": url}).get_latest_version(subject).version == 2, "evolved schema is version 2")

    # Compatibility configuration.
    check(fresh.get_compatibility() == "BACKWARD", "global level defaults to BACKWARD")
    check(fresh.get_compatibility(subject) == "BACKWARD", "subject falls back to the global level")
    fresh.set_compatibility(subject_name=subject, level="FULL")
    check(fresh.get_compatibility(subject) == "FULL", "subject level set to FULL")
    check(fresh.get_compatibility() == "BACKWARD", "global level unchanged")
    fresh.set_compatibility(level="NONE")
    check(fresh.get_compatibility() == "NONE", "global level set to NONE")
    check(fresh.get_compatibility(subject) == "FULL", "subject override survives a global change")
    expect_error(lambda: fresh.set_compatibility(level="SIDEWAYS"), 42203, "invalid level")

    # Error codes.
    expect_error(lambda: fresh.get_schema(99999), 40403, "unknown schema id")
    expect_error(lambda: fresh.get_versions("no-such-subject"), 40401, "unknown subject")
    expect_error(lambda: fresh.get_version(subject, 42), 40402, "unknown version")
    expect_error(lambda: fresh.register_schema(subject, Schema('{"type": "record"}', "AVRO")), 42201,
                 "invalid schema")

    # Deletion.
    check(fresh.delete_subject("other-subject") == [1], "delete returns deleted versions")
    check("other-subject" not in fresh.get_subjects(), "deleted subject gone")
    check(json.loads(fresh.get_schema(schema_id).schema_str) == ticket_json, "ids survive subject deletion")

    print(f"{CHECKS} passed, 0 failed")


if __name__ == "__main__":
    main()
