"""Transactions with librdkafka: consume-transform-produce with sendOffsetsToTransaction, an
aborted transaction, a fenced zombie, and a transaction the coordinator times out.

Usage: transactions.py BOOTSTRAP PREFIX
Uses topics PREFIX-in (source) and PREFIX-out (2 partitions). Checks that read_committed
consumers see exactly the committed transactions' records, never an aborted or timed-out one;
that read_uncommitted consumers see those too; that the offsets sent in the committed
transaction are the group's committed offsets; that a second producer with the same
transactional.id fences the first. Exits non-zero naming what differs.
"""

import sys
import time

from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

bootstrap, prefix = sys.argv[1], sys.argv[2]
source, sink, group = f"{prefix}-in", f"{prefix}-out", f"{prefix}-group"


def fail(message):
    sys.exit(f"FAILED: {message}")


admin = AdminClient({"bootstrap.servers": bootstrap})
for topic, partitions in [(source, 1), (sink, 2)]:
    admin.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=3)])[topic].result(timeout=30)

plain = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True})
for i in range(10):
    plain.produce(source, value=f"in-{i}".encode(), partition=0)
if plain.flush(30):
    fail("source records undelivered")


def transactional(txn_id, timeout_ms=60000):
    producer = Producer({"bootstrap.servers": bootstrap, "transactional.id": txn_id,
                         "transaction.timeout.ms": timeout_ms, "enable.idempotence": True})
    producer.init_transactions(60)
    return producer


# 1. Consume-transform-produce: read the source in a group, write to both sink partitions and
#    commit the consumed offsets in the same transaction.
consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False,
                     "auto.offset.reset": "earliest", "isolation.level": "read_committed"})
consumer.subscribe([source])
consumed = []
deadline = time.time() + 60
while len(consumed) < 10 and time.time() < deadline:
    msg = consumer.poll(0.5)
    if msg is not None and not msg.error():
        consumed.append(msg)
if len(consumed) != 10:
    fail(f"consumed {len(consumed)} source records")
producer = transactional(f"{prefix}-txn")
producer.begin_transaction()
for i, msg in enumerate(consumed):
    producer.produce(sink, value=b"committed-" + msg.value(), partition=i % 2)
producer.send_offsets_to_transaction([TopicPartition(source, 0, consumed[-1].offset() + 1)],
                                     consumer.consumer_group_metadata(), 30)
producer.commit_transaction(60)

# 2. An aborted transaction.
producer.begin_transaction()
for i in range(6):
    producer.produce(sink, value=f"aborted-{i}".encode(), partition=i % 2)
producer.flush(30)
producer.abort_transaction(60)

# 3. A zombie: a new producer with the same transactional.id fences the old one.
zombie = producer
successor = transactional(f"{prefix}-txn")
try:
    zombie.begin_transaction()
    zombie.produce(sink, value=b"zombie", partition=0)
    zombie.commit_transaction(30)
    fail("the fenced producer committed")
except KafkaException as error:
    if "fenced" not in str(error).lower() and "epoch" not in str(error).lower():
        fail(f"the zombie failed, but not as fenced: {error}")
successor.begin_transaction()
successor.produce(sink, value=b"committed-by-successor", partition=1)
successor.commit_transaction(60)

# 4. A transaction left open: the coordinator aborts it after its timeout.
abandoned = transactional(f"{prefix}-abandoned", timeout_ms=3000)
abandoned.begin_transaction()
for i in range(4):
    abandoned.produce(sink, value=f"timed-out-{i}".encode(), partition=i % 2)
abandoned.flush(30)
time.sleep(6)  # past the transaction timeout: the coordinator must have aborted it


def read_all(isolation):
    reader = Consumer({"bootstrap.servers": bootstrap, "group.id": f"{prefix}-{isolation}",
                       "enable.auto.commit": False, "isolation.level": isolation})
    reader.assign([TopicPartition(sink, p, 0) for p in range(2)])
    values = []
    idle_since = time.time()
    while time.time() - idle_since < 3:
        msg = reader.poll(0.3)
        if msg is not None and not msg.error():
            values.append(msg.value().decode())
            idle_since = time.time()
    reader.close()
    return values


committed = read_all("read_committed")
everything = read_all("read_uncommitted")
expected = sorted([f"committed-in-{i}" for i in range(10)] + ["committed-by-successor"])
if sorted(committed) != expected:
    fail(f"read_committed saw {sorted(committed)}, expected {expected}")
for value in [f"aborted-{i}" for i in range(6)] + [f"timed-out-{i}" for i in range(4)]:
    if value not in everything:
        fail(f"read_uncommitted misses {value}")
if "zombie" in committed:
    fail("a fenced producer's record is visible")

offsets = consumer.committed([TopicPartition(source, 0)], timeout=30)
if offsets[0].offset != 10:
    fail(f"the group's committed offset is {offsets[0].offset}, expected 10 (sent in the transaction)")
consumer.close()
print(f"ok: {len(committed)} committed records visible to read_committed, {len(everything)} to read_uncommitted; "
      f"abort, zombie fencing and timeout abort hold; offsets committed with the transaction")
