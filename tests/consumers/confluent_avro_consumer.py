"""A consumer built the way Debezium users build theirs: confluent-kafka's DeserializingConsumer
with the Schema Registry AvroDeserializer (fastavro underneath), optionally with a reader schema
written for Debezium's envelope. It reads a topic from the beginning and prints one JSON line
per message: {"key": ..., "value": ...} (value null for a tombstone).

    confluent_avro_consumer.py BOOTSTRAP REGISTRY_URL TOPIC COUNT [READER_SCHEMA_FILE]

Basic-auth credentials come from SR_USER_INFO ("user:password") when set.
"""
import json
import os
import sys
import time

from confluent_kafka import DeserializingConsumer, TopicPartition, OFFSET_BEGINNING
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer


def main():
    bootstrap, registry_url, topic, count = sys.argv[1:5]
    reader_schema = open(sys.argv[5]).read() if len(sys.argv) > 5 else None
    conf = {"url": registry_url}
    if os.environ.get("SR_USER_INFO"):
        conf["basic.auth.user.info"] = os.environ["SR_USER_INFO"]
    registry = SchemaRegistryClient(conf)
    consumer = DeserializingConsumer({
        "bootstrap.servers": bootstrap,
        "group.id": "debezium-style-consumer",
        "enable.auto.commit": False,
        "key.deserializer": AvroDeserializer(registry),
        "value.deserializer": AvroDeserializer(registry, reader_schema),
    })
    consumer.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
    wanted, seen = int(count), 0
    deadline = time.time() + 60
    while seen < wanted and time.time() < deadline:
        msg = consumer.poll(1.0)
        if msg is None:
            continue
        if msg.error():
            raise SystemExit(f"consumer error: {msg.error()}")
        print(json.dumps({"key": msg.key(), "value": msg.value()}, default=str), flush=True)
        seen += 1
    consumer.close()
    if seen < wanted:
        raise SystemExit(f"read {seen} of {wanted} messages within 60 s")


if __name__ == "__main__":
    main()
