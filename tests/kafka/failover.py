"""A librdkafka producer keeps producing while the test kills a partition leader.

Usage: failover.py BOOTSTRAP TOPIC SECONDS READY_FILE
Creates TOPIC (2 partitions, 3 replicas), writes READY_FILE once records are being acknowledged,
produces numbered values for SECONDS (the test kills the leader meanwhile), waits for every
delivery report, then reads both partitions from the beginning. Exits non-zero if an
acknowledged value is missing or an offset is read twice; prints the counts.
"""

import sys
import time

from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

bootstrap, topic, seconds, ready_file = sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4]
PARTITIONS = 2

admin = AdminClient({"bootstrap.servers": bootstrap})
admin.create_topics([NewTopic(topic, num_partitions=PARTITIONS, replication_factor=3)])[topic].result(timeout=30)

acked, failed = {}, []


def on_delivery(err, msg):
    if err:
        failed.append(err)
    else:
        acked[msg.value()] = (msg.partition(), msg.offset())


producer = Producer({"bootstrap.servers": bootstrap, "acks": "all", "linger.ms": 2,
                     "message.timeout.ms": 60000, "retry.backoff.ms": 50, "topic.metadata.refresh.interval.ms": 1000})
sent = 0
ready = False
start = time.time()
while time.time() - start < seconds:
    producer.produce(topic, value=f"v{sent}".encode(), partition=sent % PARTITIONS, on_delivery=on_delivery)
    sent += 1
    producer.poll(0.001 if sent % 50 == 0 else 0)
    if not ready and len(acked) >= 100:
        open(ready_file, "w").write("producing\n")
        ready = True
left = producer.flush(90)
if left:
    sys.exit(f"FAILED: {left} records never got a delivery report")

consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "unused", "enable.auto.commit": False})
consumer.assign([TopicPartition(topic, p, 0) for p in range(PARTITIONS)])
seen_offsets, read_values, unread = set(), set(), set(acked)
deadline = time.time() + 60
while unread and time.time() < deadline:
    msg = consumer.poll(0.5)
    if msg is None:
        continue
    if msg.error():
        continue
    position = (msg.partition(), msg.offset())
    if position in seen_offsets:
        sys.exit(f"FAILED: offset {position} read twice")
    seen_offsets.add(position)
    read_values.add(msg.value())
    unread.discard(msg.value())
consumer.close()
missing = unread
print(f"sent {sent}, acknowledged {len(acked)}, failed {len(failed)}, read {len(read_values)}, missing {len(missing)}")
if missing:
    sys.exit(f"FAILED: {len(missing)} acknowledged values were never read, e.g. {sorted(missing)[:5]}")
if len(acked) < sent // 2:
    sys.exit("FAILED: fewer than half of the records were acknowledged")
