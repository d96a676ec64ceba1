"""An idempotent librdkafka producer keeps producing while the test kills a partition leader.

Usage: failover.py BOOTSTRAP TOPIC SECONDS READY_FILE
Creates TOPIC (2 partitions, 3 replicas), writes READY_FILE once records are being acknowledged,
produces numbered values for SECONDS (the test kills the leader meanwhile), waits for every
delivery report, then reads both partitions from the beginning. Exits non-zero if an
acknowledged value is missing, any value is stored twice (the producer retries batches the dead
leader may have committed: the partition must deduplicate them), a partition's values are out
of send order, or an offset is read twice; prints the counts.
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


producer = Producer({"bootstrap.servers": bootstrap, "acks": "all", "linger.ms": 2, "enable.idempotence": True,
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
duplicates, last_by_partition, reordered = [], {}, []
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
    if msg.value() in read_values:
        duplicates.append(position)
    number = int(msg.value()[1:])
    if last_by_partition.get(msg.partition(), -1) > number:
        reordered.append(position)
    last_by_partition[msg.partition()] = number
    read_values.add(msg.value())
    unread.discard(msg.value())
# Read on to the end, so duplicates stored after the last acknowledged value are seen too.
ends = {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in range(PARTITIONS)}
while any(max((o for q, o in seen_offsets if q == p), default=-1) + 1 < end for p, end in ends.items()):
    if time.time() > deadline:
        sys.exit(f"FAILED: cannot read to the end offsets {ends}")
    msg = consumer.poll(0.5)
    if msg is None or msg.error():
        continue
    position = (msg.partition(), msg.offset())
    seen_offsets.add(position)
    if msg.value() in read_values:
        duplicates.append(position)
    read_values.add(msg.value())
consumer.close()
missing = unread
print(f"sent {sent}, acknowledged {len(acked)}, failed {len(failed)}, read {len(read_values)}, missing {len(missing)}, "
      f"duplicates {len(duplicates)}, reordered {len(reordered)}")
if duplicates:
    sys.exit(f"FAILED: values stored twice at {duplicates[:5]}")
if reordered:
    sys.exit(f"FAILED: values out of send order at {reordered[:5]}")
if missing:
    sys.exit(f"FAILED: {len(missing)} acknowledged values were never read, e.g. {sorted(missing)[:5]}")
if len(acked) < sent // 2:
    sys.exit("FAILED: fewer than half of the records were acknowledged")
