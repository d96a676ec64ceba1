"""Topic admin through librdkafka's admin client, and config changes that take effect.

Usage: admin.py BOOTSTRAP TOPIC
Creates TOPIC (1 partition, 3 replicas), grows it to 3 partitions, describes its configs, then
changes them with IncrementalAlterConfigs and checks each change is in force without a restart:
max.message.bytes refuses a larger record (and accepts it again once deleted), segment.bytes +
retention.bytes make the partition drop its oldest segments. Describes the cluster. Exits
non-zero naming what differs.
"""

import sys
import time

from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import (AdminClient, AlterConfigOpType, ConfigEntry, ConfigResource, NewPartitions,
                                   NewTopic)

bootstrap, topic = sys.argv[1], sys.argv[2]
admin = AdminClient({"bootstrap.servers": bootstrap})


def fail(message):
    sys.exit(f"FAILED: {message}")


def configs():
    resource = ConfigResource(ConfigResource.Type.TOPIC, topic)
    described = admin.describe_configs([resource])[resource].result(timeout=30)
    return {name: entry.value for name, entry in described.items()}


def alter(*entries):
    resource = ConfigResource(ConfigResource.Type.TOPIC, topic, incremental_configs=list(entries))
    admin.incremental_alter_configs([resource])[resource].result(timeout=30)


def produce(value, partition=0):
    """Produces one record; returns the delivery error or None."""
    outcome = []
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all", "message.max.bytes": 10_000_000,
                         "enable.idempotence": True, "compression.type": "none"})
    producer.produce(topic, value=value, partition=partition, on_delivery=lambda err, msg: outcome.append(err))
    producer.flush(30)
    if not outcome:
        fail("no delivery report")
    return outcome[0]


admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=3)])[topic].result(timeout=30)
admin.create_partitions([NewPartitions(topic, 3)])[topic].result(timeout=30)
# CreatePartitions answers once every broker shows the new partitions with leaders, so no wait.
shown = len(admin.list_topics(topic, timeout=10).topics[topic].partitions)
if shown != 3:
    fail(f"right after growing to 3 partitions the topic shows {shown}")
try:
    admin.create_partitions([NewPartitions(topic, 2)])[topic].result(timeout=30)
    fail("shrinking a topic was accepted")
except KafkaException as error:
    if "INVALID_PARTITIONS" not in str(error):
        fail(f"shrinking a topic: {error}")
error = produce(b"to the new partition", partition=2)
if error is not None:
    fail(f"cannot produce to an added partition: {error}")

before = configs()
if before.get("cleanup.policy") != "delete" or before.get("retention.ms") != "-1":
    fail(f"default configs {before}")

# max.message.bytes takes effect on the next produce, and goes back to the default when deleted.
alter(ConfigEntry("max.message.bytes", "2000", incremental_operation=AlterConfigOpType.SET))
if configs()["max.message.bytes"] != "2000":
    fail(f"max.message.bytes not described as set: {configs()}")
error = produce(b"x" * 10_000)
if error is None or "MSG_SIZE_TOO_LARGE" not in str(error):
    fail(f"a 10 kB record under max.message.bytes=2000: {error}")
alter(ConfigEntry("max.message.bytes", None, incremental_operation=AlterConfigOpType.DELETE))
if produce(b"x" * 10_000) is not None:
    fail("the 10 kB record is still refused after the limit was deleted")

# Small segments and a byte budget: retention drops the oldest segments while the node runs.
alter(ConfigEntry("segment.bytes", "16384", incremental_operation=AlterConfigOpType.SET),
      ConfigEntry("retention.bytes", "32768", incremental_operation=AlterConfigOpType.SET))
producer = Producer({"bootstrap.servers": bootstrap, "acks": "all", "linger.ms": 0, "compression.type": "none"})
for i in range(300):
    producer.produce(topic, value=b"r" * 1000, partition=0)
    producer.poll(0)
if producer.flush(30):
    fail("records left undelivered")
consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "admin-probe"})
deadline = time.time() + 30
while True:
    low, high = consumer.get_watermark_offsets(TopicPartition(topic, 0), timeout=10)
    if low > 0:
        break
    if time.time() > deadline:
        fail(f"retention never deleted a segment: watermarks {low}..{high}")
    time.sleep(0.5)
consumer.close()

after = configs()
if after["segment.bytes"] != "16384" or after["retention.bytes"] != "32768":
    fail(f"configs after the changes {after}")
cluster = admin.describe_cluster().result(timeout=30)
if len(cluster.nodes) != 3 or not cluster.cluster_id:
    fail(f"describe_cluster {cluster}")
print(f"ok: partitions 1 -> 3, max.message.bytes enforced and reset, retention moved the log start to {low}, "
      f"cluster {cluster.cluster_id} with {len(cluster.nodes)} brokers")
