"""SASL with real clients against a listener that requires it.

Usage: sasl.py BOOTSTRAP TOPIC USER PASSWORD
For PLAIN, SCRAM-SHA-256 and SCRAM-SHA-512, librdkafka produces and consumes as USER; for PLAIN
and SCRAM-SHA-512, so does kafka-python. A wrong password and an unauthenticated client must
both fail to get metadata. Exits non-zero naming what went wrong.
"""

import sys
import time

from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

bootstrap, topic, user, password = sys.argv[1:5]


def fail(message):
    sys.exit(f"FAILED: {message}")


def sasl(mechanism, secret=password):
    return {"bootstrap.servers": bootstrap, "security.protocol": "SASL_PLAINTEXT", "sasl.mechanism": mechanism,
            "sasl.username": user, "sasl.password": secret}


admin = AdminClient(sasl("SCRAM-SHA-256"))
admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=3)])[topic].result(timeout=30)

sent = 0
for mechanism in ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]:
    errors = []
    producer = Producer({**sasl(mechanism), "acks": "all", "enable.idempotence": True})
    for i in range(20):
        producer.produce(topic, value=f"{mechanism}-{i}".encode(),
                         on_delivery=lambda err, msg: errors.append(err) if err else None)
    if producer.flush(30) or errors:
        fail(f"{mechanism}: produce failed: {errors[:3]}")
    sent += 20

consumer = Consumer({**sasl("SCRAM-SHA-512"), "group.id": "sasl-readers", "auto.offset.reset": "earliest"})
consumer.assign([TopicPartition(topic, 0, 0)])
values = []
deadline = time.time() + 30
while len(values) < sent and time.time() < deadline:
    msg = consumer.poll(0.5)
    if msg is not None and not msg.error():
        values.append(msg.value())
consumer.close()
if len(values) != sent:
    fail(f"read {len(values)} of {sent} records")

from kafka import KafkaConsumer, KafkaProducer  # noqa: E402
from kafka import TopicPartition as PythonTopicPartition  # noqa: E402

for mechanism in ["PLAIN", "SCRAM-SHA-512"]:
    producer = KafkaProducer(bootstrap_servers=bootstrap, security_protocol="SASL_PLAINTEXT",
                             sasl_mechanism=mechanism, sasl_plain_username=user, sasl_plain_password=password)
    producer.send(topic, value=f"kafka-python-{mechanism}".encode()).get(timeout=30)
    producer.close()
reader = KafkaConsumer(bootstrap_servers=bootstrap, security_protocol="SASL_PLAINTEXT", sasl_mechanism="PLAIN",
                       sasl_plain_username=user, sasl_plain_password=password, group_id=None,
                       auto_offset_reset="earliest", consumer_timeout_ms=5000)
reader.assign([PythonTopicPartition(topic, 0)])
seen = [m.value for m in reader]
reader.close()
if len(seen) != sent + 2:
    fail(f"kafka-python read {len(seen)} records, expected {sent + 2}")

# Refusals: a wrong password, and no authentication at all.
for config, what in [(sasl("SCRAM-SHA-256", "wrong"), "a wrong SCRAM password"),
                     (sasl("PLAIN", "wrong"), "a wrong PLAIN password"),
                     ({"bootstrap.servers": bootstrap}, "no authentication")]:
    try:
        listed = AdminClient(config).list_topics(timeout=5)
        fail(f"{what} was let in: {list(listed.topics)}")
    except KafkaException:
        pass
print(f"ok: PLAIN, SCRAM-SHA-256, SCRAM-SHA-512 with librdkafka and kafka-python; wrong passwords and "
      f"unauthenticated clients refused")
