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
The harness stamps the times; the worker runs until SECONDS have passed, then flushes.
"""

import json
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
    client = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False,
                       "auto.offset.reset": "earliest", "isolation.level": "read_committed",
                       "session.timeout.ms": 6000, "heartbeat.interval.ms": 500,
                       "topic.metadata.refresh.interval.ms": 1000})

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


if __name__ == "__main__":
    mode = sys.argv[1]
    {"producer": producer, "consumer": consumer}[mode](*sys.argv[2:])
