"""A Jepsen worker speaking Kafka through librdkafka (confluent-kafka): prints the history
events of its operations as JSON lines on stdout, for the `kafka-queue` workload of `jepsen/`.

Usage:
  jepsen_worker.py producer BOOTSTRAP TOPIC PARTITIONS PROCESS FIRST_VALUE IDEMPOTENT SECONDS
      sends FIRST_VALUE, FIRST_VALUE+1, … (partition = value % PARTITIONS), acks=all,
      idempotent when IDEMPOTENT is 1; a send whose delivery failed is `info` (it may still
      have been written), one that was refused before sending is `fail`.
  jepsen_worker.py consumer BOOTSTRAP TOPIC GROUP PROCESS SECONDS
      polls in consumer group GROUP (read_committed, manual commits after each poll); prints
      `assign` events when partitions are assigned, `poll` events with the records, `commit`
      events with the offsets committed.
  jepsen_worker.py txn-producer BOOTSTRAP TOPIC PARTITIONS PROCESS FIRST_VALUE TXN_ID SECONDS
      transactions of 1–5 values each, about one in four aborted: the values of a committed
      transaction are `ok` (with their offsets), of an aborted one `fail` (read_committed readers
      must never see them), of one whose outcome is unknown `info`.
  jepsen_worker.py final-read BOOTSTRAP TOPIC PARTITIONS
      reads every partition to its end with read_committed and prints one `final-read` event per
      partition.
The harness stamps the times; the worker runs until SECONDS have passed, then flushes.
"""

import json
import os
import sys
import time

from confluent_kafka import Consumer, KafkaException, Producer


def emit(event):
    sys.stdout.write(json.dumps(event) + "\n")
    sys.stdout.flush()


def base(process, kind, f):
    return {"index": 0, "process": process, "type": kind, "f": f, "time_ms": 0}


def producer(bootstrap, topic, partitions, process, first, idempotent, seconds):
    partitions, process, first, seconds = int(partitions), int(process), int(first), float(seconds)
    config = {"bootstrap.servers": bootstrap, "acks": "all", "linger.ms": 5, "message.timeout.ms": 10000,
              "topic.metadata.refresh.interval.ms": 1000, "retry.backoff.ms": 100}
    if idempotent == "1":
        config["enable.idempotence"] = True
    else:
        config["retries"] = 0  # no client retries: any duplicate is the broker's
    client = Producer(config)
    state = {"process": process}

    def delivered(value, partition):
        def callback(err, msg):
            event = base(state["process"], "ok" if err is None else "info", "send")
            event.update({"partition": partition, "value": value})
            if err is None:
                event["offset"] = msg.offset()
            else:
                event["error"] = str(err)
            emit(event)
        return callback

    value = first
    deadline = time.time() + seconds
    while time.time() < deadline:
        partition = value % partitions
        invoke = base(state["process"], "invoke", "send")
        invoke.update({"partition": partition, "value": value})
        emit(invoke)
        try:
            client.produce(topic, value=str(value).encode(), partition=partition,
                           on_delivery=delivered(value, partition))
        except (BufferError, KafkaException) as error:
            done = base(state["process"], "fail", "send")
            done.update({"partition": partition, "value": value, "error": str(error)})
            emit(done)
        value += 1
        client.poll(0.002)
    client.flush(30)


def consumer(bootstrap, topic, group, process, seconds):
    process, seconds = int(process), float(seconds)
    config = {"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False,
              "auto.offset.reset": "earliest", "isolation.level": "read_committed",
              "session.timeout.ms": 6000, "heartbeat.interval.ms": 500,
              "topic.metadata.refresh.interval.ms": 1000}
    if os.environ.get("JEPSEN_CLIENT_DEBUG"):
        config["debug"] = os.environ["JEPSEN_CLIENT_DEBUG"]
    client = Consumer(config)

    def assigned(_, partitions):
        for p in partitions:
            event = base(process, "ok", "assign")
            event["partition"] = p.partition
            emit(event)

    client.subscribe([topic], on_assign=assigned)
    deadline = time.time() + seconds
    while time.time() < deadline:
        emit(base(process, "invoke", "poll"))
        messages = client.consume(100, 0.5)
        reads = [{"partition": m.partition(), "offset": m.offset(), "value": int(m.value())}
                 for m in messages if not m.error() and m.value() is not None]
        done = base(process, "ok", "poll")
        done["reads"] = reads
        emit(done)
        if not reads:
            continue
        try:
            committed = client.commit(asynchronous=False)
            for tp in committed or []:
                if tp.error is None and tp.offset >= 0:
                    event = base(process, "ok", "commit")
                    event.update({"partition": tp.partition, "offset": tp.offset})
                    emit(event)
        except KafkaException:
            pass  # a commit refused during a rebalance: the records may be read again
    client.close()


def consumer_python(bootstrap, topic, group, process, seconds):
    """As `consumer`, with kafka-python's group client (another implementation of the protocol)."""
    from kafka import KafkaConsumer
    from kafka.consumer.subscription_state import ConsumerRebalanceListener
    process, seconds = int(process), float(seconds)

    class Listener(ConsumerRebalanceListener):
        def on_partitions_revoked(self, revoked):
            pass

        def on_partitions_assigned(self, assigned):
            for tp in assigned:
                event = base(process, "ok", "assign")
                event["partition"] = tp.partition
                emit(event)

    client = KafkaConsumer(bootstrap_servers=bootstrap.split(","), group_id=group, enable_auto_commit=False,
                           auto_offset_reset="earliest", isolation_level="read_committed",
                           session_timeout_ms=6000, heartbeat_interval_ms=500, metadata_max_age_ms=1000)
    client.subscribe([topic], listener=Listener())
    deadline = time.time() + seconds
    while time.time() < deadline:
        emit(base(process, "invoke", "poll"))
        batches = client.poll(timeout_ms=500, max_records=100)
        reads = [{"partition": tp.partition, "offset": m.offset, "value": int(m.value)}
                 for tp, messages in batches.items() for m in messages if m.value is not None]
        done = base(process, "ok", "poll")
        done["reads"] = reads
        emit(done)
        if not reads:
            continue
        try:
            client.commit()
            for tp, messages in batches.items():
                event = base(process, "ok", "commit")
                event.update({"partition": tp.partition, "offset": messages[-1].offset + 1})
                emit(event)
        except Exception:
            pass
    client.close()


def txn_producer(bootstrap, topic, partitions, process, first, txn_id, seconds):
    import random
    partitions, process, value, seconds = int(partitions), int(process), int(first), float(seconds)
    rng = random.Random(value)

    deadline = time.time() + seconds

    def fresh():
        # A retriable failure (the coordinator moving or still finishing the previous
        # producer's transaction) is retried, as applications do, for as long as the run lasts.
        while True:
            client = Producer({"bootstrap.servers": bootstrap, "transactional.id": txn_id,
                               "transaction.timeout.ms": 10000, "topic.metadata.refresh.interval.ms": 1000})
            try:
                client.init_transactions(30)
                return client
            except KafkaException as exc:
                print(f"init_transactions failed, retrying: {exc}", file=sys.stderr, flush=True)
                if time.time() > deadline:
                    raise
                time.sleep(1)

    client = fresh()
    while time.time() < deadline:
        values = [(value + i, rng.randrange(partitions)) for i in range(rng.randint(1, 5))]
        value += len(values)
        offsets = {}

        def delivered(v):
            def callback(err, msg):
                if err is None:
                    offsets[v] = msg.offset()
            return callback

        for v, p in values:
            event = base(process, "invoke", "send")
            event.update({"partition": p, "value": v})
            emit(event)
        abort = rng.random() < 0.25
        outcome, error = "ok", None
        try:
            client.begin_transaction()
            for v, p in values:
                client.produce(topic, value=str(v).encode(), partition=p, on_delivery=delivered(v))
            client.flush(30)
            if abort:
                client.abort_transaction(30)
                outcome = "fail"
            else:
                client.commit_transaction(30)
        except KafkaException as exc:
            outcome, error = "info", str(exc)
            try:
                client.abort_transaction(10)
                outcome = "fail"
            except KafkaException:
                process += 100  # a new process after an unknown outcome
                client = fresh()
        for v, p in values:
            event = base(process, outcome, "send")
            event.update({"partition": p, "value": v})
            if outcome == "ok" and v in offsets:
                event["offset"] = offsets[v]
            if error:
                event["error"] = error
            emit(event)


def final_read(bootstrap, topic, partitions):
    from confluent_kafka import TopicPartition
    partitions = int(partitions)
    client = Consumer({"bootstrap.servers": bootstrap, "group.id": "jepsen-final-read",
                       "enable.auto.commit": False, "isolation.level": "read_committed"})
    for p in range(partitions):
        deadline = time.time() + 60
        while True:
            try:
                _, end = client.get_watermark_offsets(TopicPartition(topic, p), timeout=5)
                break
            except KafkaException as error:
                # "Unknown partition": the client's metadata lacks it; ask for the topic's again.
                print(f"final read: partition {p}: {error}; refreshing metadata", file=sys.stderr, flush=True)
                if time.time() > deadline:
                    raise
                try:
                    client.list_topics(topic, timeout=5)
                except KafkaException:
                    pass
                time.sleep(0.5)
        client.assign([TopicPartition(topic, p, 0)])
        reads, position = [], 0
        deadline = time.time() + 60
        while position < end and time.time() < deadline:
            for m in client.consume(500, 0.5):
                if m.error() or m.value() is None:
                    continue
                reads.append({"partition": p, "offset": m.offset(), "value": int(m.value())})
                position = m.offset() + 1
            # Markers and aborted records take offsets that are never returned.
            position = max(position, client.position([TopicPartition(topic, p)])[0].offset)
        event = base(900 + p, "ok", "final-read")
        event.update({"partition": p, "reads": reads})
        emit(event)
    client.close()


if __name__ == "__main__":
    mode = sys.argv[1]
    {"producer": producer, "consumer": consumer, "consumer-python": consumer_python,
     "txn-producer": txn_producer, "final-read": final_read}[mode](*sys.argv[2:])
