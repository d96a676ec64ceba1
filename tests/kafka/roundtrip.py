"""Produce with every compression codec, keys and headers, then read everything back.

Usage: roundtrip.py CLIENT BOOTSTRAP TOPIC PARTITIONS REPLICATION_FACTOR
CLIENT is `confluent` (librdkafka) or `kafka-python`. The topic is created through the client's
admin API. Exits non-zero, naming what differs, unless every produced record is read back once,
per partition in production order, with its key, value and headers.
"""

import sys
import time

CODECS = ["none", "gzip", "snappy", "lz4", "zstd"]
PER_CODEC = 200


def expected_records(topic_partitions):
    records = []
    for codec in CODECS:
        for i in range(PER_CODEC):
            partition = i % topic_partitions
            key = f"{codec}-key-{i}".encode()
            value = f"{codec}-value-{i}-".encode() + b"x" * (i % 50)
            headers = [("codec", codec.encode()), ("index", str(i).encode())]
            records.append((codec, partition, key, value, headers))
    return records


def check(expected, read):
    """read: list of (partition, offset, key, value, headers) in consumption order."""
    by_partition = {}
    for codec, partition, key, value, headers in expected:
        by_partition.setdefault(partition, []).append((key, value, headers))
    got = {}
    for partition, offset, key, value, headers in read:
        got.setdefault(partition, []).append((offset, key, value, headers))
    problems = []
    for partition, want in sorted(by_partition.items()):
        have = got.get(partition, [])
        offsets = [o for o, *_ in have]
        if offsets != list(range(len(offsets))):
            problems.append(f"partition {partition}: offsets are not 0..n: {offsets[:10]}…")
        records = [(k, v, h) for _, k, v, h in have]
        if records != want:
            if sorted(records) == sorted(want):
                problems.append(f"partition {partition}: every record read, but out of production order")
            else:
                problems.append(f"partition {partition}: read {len(have)} records, expected {len(want)}, or they differ")
    if problems:
        sys.exit("FAILED: " + "; ".join(problems))


def confluent(bootstrap, topic, partitions, rf):
    from confluent_kafka import Consumer, Producer, TopicPartition
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": bootstrap})
    futures = admin.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=rf)])
    futures[topic].result(timeout=30)
    # Produce only once every partition has a leader, so the test is about the data path.
    deadline = time.time() + 30
    while True:
        listed = admin.list_topics(timeout=10).topics
        described = listed.get(topic)
        if described and len(described.partitions) == partitions and all(
                p.leader >= 0 and not p.error for p in described.partitions.values()):
            break
        assert time.time() < deadline, f"partitions never got leaders: {described}"
        time.sleep(0.1)
    expected = expected_records(partitions)
    errors = []
    for codec in CODECS:
        # Idempotence keeps order across retries; it is what the order check below relies on.
        producer = Producer({"bootstrap.servers": bootstrap, "compression.type": codec, "linger.ms": 5, "acks": "all",
                             "enable.idempotence": True})
        for c, partition, key, value, headers in expected:
            if c != codec:
                continue
            producer.produce(topic, value=value, key=key, headers=headers, partition=partition,
                             on_delivery=lambda err, msg: errors.append(err) if err else None)
            producer.poll(0)
        assert producer.flush(30) == 0, "records left undelivered"
    assert not errors, f"delivery errors: {errors[:5]}"
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "unused", "enable.auto.commit": False,
                         "auto.offset.reset": "earliest"})
    consumer.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
    read = []
    deadline = time.time() + 60
    while len(read) < len(expected) and time.time() < deadline:
        msg = consumer.poll(0.5)
        if msg is None:
            continue
        if msg.error():
            sys.exit(f"FAILED: consumer error {msg.error()}")
        read.append((msg.partition(), msg.offset(), msg.key(), msg.value(), list(msg.headers() or [])))
    consumer.close()
    check(expected, read)
    print(f"ok: confluent-kafka {len(read)} records over {partitions} partitions, codecs {CODECS}")


def kafka_python(bootstrap, topic, partitions, rf):
    from kafka import KafkaConsumer, KafkaProducer, TopicPartition
    from kafka.admin import KafkaAdminClient, NewTopic

    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    admin.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=rf)])
    assert topic in admin.list_topics(), "the new topic is not listed"
    deadline = time.time() + 30
    while True:  # leaders first, as above
        described = admin.describe_topics([topic])[0]
        if described["error_code"] == 0 and all(p["leader_id"] >= 0 and p["error_code"] == 0
                                                for p in described["partitions"]):
            break
        assert time.time() < deadline, f"partitions never got leaders: {described}"
        time.sleep(0.1)
    admin.close()
    expected = expected_records(partitions)
    for codec in CODECS:
        # kafka-python 3 is idempotent by default: retries keep their order.
        producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5,
                                 compression_type=None if codec == "none" else codec)
        futures = [producer.send(topic, value=value, key=key, headers=headers, partition=partition)
                   for c, partition, key, value, headers in expected if c == codec]
        producer.flush(30)
        for future in futures:
            future.get(timeout=30)
        producer.close()
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
                             auto_offset_reset="earliest")
    consumer.assign([TopicPartition(topic, p) for p in range(partitions)])
    consumer.seek_to_beginning()
    read = []
    deadline = time.time() + 60
    while len(read) < len(expected) and time.time() < deadline:
        for tp, messages in consumer.poll(timeout_ms=500).items():
            for msg in messages:
                read.append((tp.partition, msg.offset, msg.key, msg.value, list(msg.headers)))
    consumer.close()
    read.sort(key=lambda r: (r[0], r[1]))
    check(expected, read)
    print(f"ok: kafka-python {len(read)} records over {partitions} partitions, codecs {CODECS}")


if __name__ == "__main__":
    client, bootstrap, topic, partitions, rf = sys.argv[1:6]
    {"confluent": confluent, "kafka-python": kafka_python}[client](bootstrap, topic, int(partitions), int(rf))
