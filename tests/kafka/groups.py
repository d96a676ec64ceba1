"""Consumer groups with real clients: rebalancing while a member is killed, committed offsets,
and the group admin APIs.

Usage:
  groups.py run BOOTSTRAP TOPIC GROUP STRATEGY [static]   three librdkafka members with STRATEGY
      (range, roundrobin or cooperative-sticky; static members with `group.instance.id`) share TOPIC (6 partitions, 3 replicas); one is
      kill -9'ed mid-stream; the other two must take over its partitions. Checks that every
      record is consumed, that no record is consumed again after a commit covered it, and that
      the committed offsets reach the end of every partition. Prints "coordinator N".
  groups.py committed BOOTSTRAP TOPIC GROUP      the group's committed offsets equal the end offsets
      (run after the coordinator was killed: they must have survived it).
  groups.py admin BOOTSTRAP TOPIC GROUP          kafka-python's admin client lists and describes the
      group, deletes it, and a kafka-python roundrobin consumer joins a fresh group and reads.
  groups.py member BOOTSTRAP TOPIC GROUP STRATEGY LOG STOP_FILE INSTANCE   (internal) one member;
      INSTANCE is its group.instance.id or "-".
"""

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

PARTITIONS = 6
RECORDS = 3000


def member(bootstrap, topic, group, strategy, log_path, stop_file, instance):
    from confluent_kafka import Consumer

    config = {"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False,
              "auto.offset.reset": "earliest", "session.timeout.ms": 6000,
              "heartbeat.interval.ms": 500, "partition.assignment.strategy": strategy}
    if instance != "-":
        config["group.instance.id"] = instance
    consumer = Consumer(config)
    consumer.subscribe([topic])
    log = open(log_path, "a", buffering=1)
    while not os.path.exists(stop_file):
        msg = consumer.poll(0.2)
        if msg is None or msg.error():
            continue
        log.write(f"P {time.time():.6f} {msg.partition()} {msg.offset()}\n")
        time.sleep(0.003)  # "processing": leaves time to kill a member mid-stream
        try:
            consumer.commit(message=msg, asynchronous=False)
            log.write(f"C {time.time():.6f} {msg.partition()} {msg.offset()}\n")
        except Exception as error:  # a commit refused during a rebalance: the record may come again
            log.write(f"E {time.time():.6f} {msg.partition()} {msg.offset()} {error}\n")
    consumer.close()  # LeaveGroup


def end_offsets(bootstrap, topic):
    from confluent_kafka import Consumer, TopicPartition

    deadline = time.time() + 60
    while True:
        # A partition whose leader was just killed answers once a new one is elected; a fresh
        # client each time, so stale leader metadata is not reused.
        consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "end-offsets-probe",
                             "topic.metadata.refresh.interval.ms": 1000})
        try:
            ends = {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=5)[1]
                    for p in range(PARTITIONS)}
            consumer.close()
            return ends
        except Exception as error:
            consumer.close()
            if time.time() > deadline:
                sys.exit(f"FAILED: cannot read end offsets: {error}")
            time.sleep(0.5)


def run(bootstrap, topic, group, strategy, static=None):
    from confluent_kafka import Producer
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(topic, num_partitions=PARTITIONS, replication_factor=3)])[topic].result(timeout=30)
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "linger.ms": 5})
    for i in range(RECORDS):
        producer.produce(topic, value=f"v{i}".encode(), partition=i % PARTITIONS)
    assert producer.flush(60) == 0, "records left undelivered"
    ends = end_offsets(bootstrap, topic)
    assert sum(ends.values()) == RECORDS, f"end offsets {ends}"

    workdir = tempfile.mkdtemp(prefix="groups-")
    stop_marker = f"{workdir}/stop"
    logs = [f"{workdir}/member-{i}.log" for i in range(3)]
    instances = [f"{group}-member-{i}" if static == "static" else "-" for i in range(3)]
    members = [subprocess.Popen([sys.executable, __file__, "member", bootstrap, topic, group, strategy, log,
                                 stop_marker, instance]) for log, instance in zip(logs, instances)]

    def events():
        parsed = []
        for index, path in enumerate(logs):
            if not os.path.exists(path):
                continue
            for line in open(path):
                parts = line.split()
                if len(parts) >= 4 and parts[0] in "PCE":
                    parsed.append((float(parts[1]), parts[0], int(parts[2]), int(parts[3]), index))
        return sorted(parsed)

    def processed():
        return {(p, o) for _, kind, p, o, _ in events() if kind == "P"}

    # Kill member 0 once it has done some work, while the others are still busy.
    deadline = time.time() + 60
    while sum(1 for e in events() if e[1] == "P" and e[4] == 0) < 50:
        assert time.time() < deadline, "member 0 never got going"
        time.sleep(0.05)
    os.kill(members[0].pid, signal.SIGKILL)
    members[0].wait()
    killed_at = time.time()

    wanted = {(p, o) for p, end in ends.items() for o in range(end)}
    deadline = time.time() + 90
    while not wanted <= processed():
        if time.time() > deadline:
            missing = sorted(wanted - processed())
            sys.exit(f"FAILED: {len(missing)} records never consumed, e.g. {missing[:5]}")
        time.sleep(0.2)
    open(stop_marker, "w").close()
    for m in members[1:]:
        m.wait(timeout=60)

    # No record consumed again after a commit covering it (commit of offset o covers <= o).
    committed_at = {}  # partition -> list of (time, offset)
    seen = {}
    violations = []
    for t, kind, p, o, who in events():
        if kind == "C":
            committed_at.setdefault(p, []).append((t, o))
        elif kind == "P":
            if (p, o) in seen and any(ct < t and co >= o for ct, co in committed_at.get(p, [])):
                violations.append((p, o, who))
            seen[(p, o)] = t
    if violations:
        sys.exit(f"FAILED: {len(violations)} records consumed again after being committed, e.g. {violations[:5]}")
    redelivered = sum(1 for e in events() if e[1] == "P") - len(processed())
    survivors = {e[4] for e in events() if e[1] == "P" and e[0] > killed_at + 1}
    if 0 in survivors or len(survivors) < 1:
        sys.exit(f"FAILED: unexpected consumers after the kill: {survivors}")
    check_committed(bootstrap, topic, group, ends)
    described = admin.describe_consumer_groups([group])[group].result(timeout=30)
    shutil.rmtree(workdir)
    kind = "static" if static == "static" else "dynamic"
    print(f"ok: {strategy} ({kind}): {len(wanted)} records consumed by 3 members (one killed), {redelivered} redelivered "
          f"uncommitted; state {described.state}")
    print(f"coordinator {described.coordinator.id}")


def check_committed(bootstrap, topic, group, ends):
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False,
                         "topic.metadata.refresh.interval.ms": 1000})
    deadline = time.time() + 60
    while True:
        try:
            committed = consumer.committed([TopicPartition(topic, p) for p in range(PARTITIONS)], timeout=10)
            got = {tp.partition: tp.offset for tp in committed}
            break
        except Exception as error:  # the coordinator may be moving: retry
            if time.time() > deadline:
                sys.exit(f"FAILED: cannot read committed offsets: {error}")
            time.sleep(0.5)
    consumer.close()
    if got != ends:
        sys.exit(f"FAILED: committed offsets {got} != end offsets {ends}")


def committed(bootstrap, topic, group):
    check_committed(bootstrap, topic, group, end_offsets(bootstrap, topic))
    print("ok: committed offsets survived")


def admin(bootstrap, topic, group):
    from kafka import KafkaConsumer
    from kafka.admin import KafkaAdminClient
    from kafka.coordinator.assignors.roundrobin import RoundRobinPartitionAssignor

    client = KafkaAdminClient(bootstrap_servers=bootstrap)
    listed = [g["group_id"] for g in client.list_groups()]
    if group not in listed:
        sys.exit(f"FAILED: {group} not in {listed}")
    description = client.describe_groups([group])[group]
    if description["group_state"] != "Empty":
        sys.exit(f"FAILED: a group whose members all left is {description}")
    offsets = client.list_group_offsets({group: None})[group]
    if len(offsets) != PARTITIONS:
        sys.exit(f"FAILED: offsets listed {offsets}")
    client.delete_groups([group])
    listed = [g["group_id"] for g in client.list_groups()]
    if group in listed:
        sys.exit(f"FAILED: {group} still listed after deletion")
    if client.list_group_offsets({group: None})[group]:
        sys.exit("FAILED: a deleted group still has offsets")

    # kafka-python's own group client (roundrobin) reads everything and commits.
    consumer = KafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=group + "-python",
                             auto_offset_reset="earliest", enable_auto_commit=False,
                             partition_assignment_strategy=[RoundRobinPartitionAssignor])
    read = 0
    deadline = time.time() + 60
    while read < RECORDS and time.time() < deadline:
        for _, messages in consumer.poll(timeout_ms=500).items():
            read += len(messages)
    consumer.commit()
    consumer.close()
    if read != RECORDS:
        sys.exit(f"FAILED: kafka-python group consumer read {read} of {RECORDS}")
    fresh = client.list_group_offsets({group + "-python": None})[group + "-python"]
    if sum(meta.offset for meta in fresh.values()) != RECORDS:
        sys.exit(f"FAILED: kafka-python committed {fresh}")
    client.close()
    print("ok: admin list/describe/offsets/delete and a kafka-python group")


if __name__ == "__main__":
    mode = sys.argv[1]
    if mode == "member":
        member(*sys.argv[2:9])
    elif mode == "run":
        run(*sys.argv[2:7])
    elif mode == "committed":
        committed(*sys.argv[2:5])
    elif mode == "admin":
        admin(*sys.argv[2:5])
    else:
        sys.exit(f"unknown mode {mode}")
