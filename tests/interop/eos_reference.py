#!/usr/bin/env python3
"""A reference consume-transform-produce app on Apache Kafka's own client
protocol (confluent-kafka / librdkafka), used to tell the test broker's
behaviour apart from fieldcrypt's: it does what fieldcrypt does to a group and
to transactions, with nothing of fieldcrypt in it.

Every record of --source is copied to --target (same key, value, headers, same
partition number), with three headers added:

  ref.txn  "<transactional.id>/<pid>/<n>" (eos) or "<label>/<pid>/<n>" (alo):
           the transaction (or batch) that wrote it;
  ref.src  "<partition>:<offset>" of the source record;
  ref.by   the instance label.

--mode eos: a Consumer (isolation.level=read_committed, enable.auto.commit=false)
and a Producer with transactional.id; per batch: begin, produce the copies,
send_offsets_to_transaction(consumer.position(assignment),
consumer.consumer_group_metadata()), commit. A batch is open across consume()
calls (until --batch-records or --batch-ms), so an eager revocation can find a
transaction open: --on-revoke commit (default) commits it with its offsets,
--on-revoke abort aborts it (the next owner re-reads from the committed offsets).

--mode alo: produce the copies, flush, then commit the consumed positions
synchronously; on revocation the same (flush, commit).

SIGTERM/SIGINT: finish the open batch (commit it), close the consumer (a
LeaveGroup), flush the producer, exit 0; a watchdog exits 4 if that takes longer
than --drain-timeout seconds.

--status-file: a JSON file rewritten (atomically) on every assignment change
and a few times a second: label, pid, member id, assigned partitions, counts
of assign/revoke callbacks, records copied, transactions committed/aborted.
--journal: one line per finished transaction/batch: "<t> commit|abort <ref.txn>
<records>"; a copy whose ref.txn is journaled "abort" was never committed.

--debug cgrp (the default) makes librdkafka log the consumer-group protocol to
stderr ("JoinGroup response: GenerationId .., LeaderId .., my MemberId ..").

Exit status: 0 clean stop, 3 fatal client error (e.g. fenced), 4 drain timeout.
"""

import argparse
import json
import os
import signal
import sys
import threading
import time

from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    Producer,
    TopicPartition,
)


def log(label, msg):
    sys.stderr.write(f"REF {time.time():.3f} [{label}] {msg}\n")
    sys.stderr.flush()


class App:
    def __init__(self, a):
        self.a = a
        self.label = a.label or a.transactional_id or f"pid{os.getpid()}"
        self.stop = threading.Event()
        self.assignment = []
        self.assigns = 0
        self.revokes = 0
        self.copied = 0
        self.committed_txns = 0
        self.aborted_txns = 0
        self.txn_open = False
        self.txn_n = 0
        self.batch_records = 0
        self.batch_started = 0.0
        self.last_status = 0.0
        self.journal = open(a.journal, "a", buffering=1) if a.journal else None

        cconf = {
            "bootstrap.servers": a.bootstrap,
            "group.id": a.group,
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "isolation.level": "read_committed",
            "partition.assignment.strategy": a.assignor,
            "session.timeout.ms": a.session_timeout_ms,
            "heartbeat.interval.ms": a.heartbeat_ms,
            "max.poll.interval.ms": a.max_poll_interval_ms,
            "client.id": f"ref-{self.label}",
        }
        if a.debug:
            cconf["debug"] = a.debug
        pconf = {
            "bootstrap.servers": a.bootstrap,
            "client.id": f"ref-{self.label}-p",
            "linger.ms": 5,
        }
        if a.mode == "eos":
            pconf["transactional.id"] = a.transactional_id
            pconf["transaction.timeout.ms"] = a.transaction_timeout_ms
        else:
            pconf["enable.idempotence"] = True
        self.consumer = Consumer(cconf)
        self.producer = Producer(pconf)
        if a.mode == "eos":
            t = time.time()
            self.producer.init_transactions(a.op_timeout)
            log(self.label, f"init_transactions done in {time.time() - t:.2f} s "
                f"(transactional.id={a.transactional_id})")

    # --- status -----------------------------------------------------------
    def member_id(self):
        try:
            return self.consumer.memberid()
        except Exception:  # noqa: BLE001 - not joined yet / closed
            return None

    def write_status(self, force=False):
        if not self.a.status_file:
            return
        now = time.time()
        if not force and now - self.last_status < 0.2:
            return
        self.last_status = now
        st = {
            "label": self.label,
            "pid": os.getpid(),
            "t": now,
            "member_id": self.member_id(),
            "assignment": sorted(p.partition for p in self.assignment),
            "assigns": self.assigns,
            "revokes": self.revokes,
            "copied": self.copied,
            "committed_txns": self.committed_txns,
            "aborted_txns": self.aborted_txns,
            "stopping": self.stop.is_set(),
        }
        tmp = self.a.status_file + ".tmp"
        with open(tmp, "w") as f:
            json.dump(st, f)
        os.replace(tmp, self.a.status_file)

    # --- rebalance callbacks ------------------------------------------------
    def on_assign(self, consumer, parts):
        self.assigns += 1
        self.assignment = list(parts)
        log(self.label, f"ASSIGN {sorted(p.partition for p in parts)} member={self.member_id()}")
        self.write_status(force=True)

    def on_revoke(self, consumer, parts):
        self.revokes += 1
        log(self.label, f"REVOKE {sorted(p.partition for p in parts)} txn_open={self.txn_open}")
        if self.txn_open or self.batch_records:
            if self.a.mode == "eos" and self.a.on_revoke == "abort":
                self.abort_batch("revoke")
            else:
                self.finish_batch("revoke")
        self.assignment = []
        self.write_status(force=True)

    def on_lost(self, consumer, parts):
        self.revokes += 1
        log(self.label, f"LOST {sorted(p.partition for p in parts)} txn_open={self.txn_open}")
        if self.txn_open:
            self.abort_batch("lost")
        self.assignment = []
        self.write_status(force=True)

    # --- batches ------------------------------------------------------------
    def txn_name(self):
        base = self.a.transactional_id if self.a.mode == "eos" else self.label
        return f"{base}/{os.getpid()}/{self.txn_n}"

    def positions(self):
        if not self.assignment:
            return []
        pos = self.consumer.position(self.assignment)
        return [p for p in pos if p.offset >= 0]

    def copy(self, m):
        if not self.txn_open and self.batch_records == 0:
            self.txn_n += 1
            if self.a.mode == "eos":
                self.producer.begin_transaction()
                self.txn_open = True
            self.batch_started = time.time()
        hdrs = list(m.headers() or [])
        hdrs += [
            ("ref.txn", self.txn_name().encode()),
            ("ref.src", f"{m.partition()}:{m.offset()}".encode()),
            ("ref.by", self.label.encode()),
        ]
        while True:
            try:
                self.producer.produce(self.a.target, key=m.key(), value=m.value(),
                                      headers=hdrs, partition=m.partition())
                break
            except BufferError:
                self.producer.poll(0.05)
        self.batch_records += 1

    def finish_batch(self, why):
        """Commits the open batch with the consumed positions (eos: one
        transaction; alo: flush, then commit the offsets)."""
        if not (self.txn_open or self.batch_records):
            return
        name, n = self.txn_name(), self.batch_records
        a = self.a
        if a.mode == "eos":
            for attempt in range(5):
                try:
                    self.producer.send_offsets_to_transaction(
                        self.positions(), self.consumer.consumer_group_metadata(), a.op_timeout)
                    self.producer.commit_transaction(a.op_timeout)
                    break
                except KafkaException as e:
                    err = e.args[0]
                    if err.fatal():
                        log(self.label, f"FATAL in commit ({why}): {err}")
                        self.fatal(err)
                    if err.txn_requires_abort():
                        log(self.label, f"commit ({why}) needs abort: {err}")
                        self.abort_batch(why + "/abortable", rewind=True)
                        return
                    if err.retriable() and attempt < 4:
                        log(self.label, f"commit ({why}) retriable: {err}")
                        time.sleep(0.2)
                        continue
                    log(self.label, f"commit ({why}) failed: {err}; aborting")
                    self.abort_batch(why + "/failed", rewind=True)
                    return
            self.txn_open = False
        else:
            left = self.producer.flush(a.op_timeout)
            if left:
                log(self.label, f"flush left {left} undelivered ({why})")
            pos = self.positions()
            if pos:
                try:
                    self.consumer.commit(offsets=pos, asynchronous=False)
                except KafkaException as e:
                    log(self.label, f"offset commit ({why}) failed: {e.args[0]}")
        self.copied += n
        self.committed_txns += 1
        self.batch_records = 0
        if self.journal:
            self.journal.write(f"{time.time():.3f} commit {name} {n}\n")
        self.write_status()

    def abort_batch(self, why, rewind=False):
        name, n = self.txn_name(), self.batch_records
        try:
            self.producer.abort_transaction(self.a.op_timeout)
        except KafkaException as e:
            err = e.args[0]
            log(self.label, f"abort ({why}) failed: {err}")
            if err.fatal():
                self.fatal(err)
        self.txn_open = False
        self.batch_records = 0
        self.aborted_txns += 1
        if self.journal:
            self.journal.write(f"{time.time():.3f} abort {name} {n}\n")
        log(self.label, f"ABORTED {name} ({n} records, {why})")
        if rewind and self.assignment:
            # Re-read what the aborted transaction consumed.
            try:
                committed = self.consumer.committed(self.assignment, self.a.op_timeout)
                for tp in committed:
                    off = tp.offset if tp.offset >= 0 else OFFSET_BEGINNING
                    self.consumer.seek(TopicPartition(tp.topic, tp.partition, off))
            except KafkaException as e:
                log(self.label, f"rewind failed: {e.args[0]}; exiting")
                self.fatal(e.args[0])
        self.write_status(force=True)

    def fatal(self, err):
        self.write_status(force=True)
        log(self.label, f"exit 3: {err}")
        sys.stderr.flush()
        os._exit(3)

    # --- main loop ------------------------------------------------------------
    def run(self):
        a = self.a
        self.consumer.subscribe([a.source], on_assign=self.on_assign,
                                on_revoke=self.on_revoke, on_lost=self.on_lost)
        self.write_status(force=True)
        log(self.label, f"subscribed to {a.source} as group {a.group} (mode {a.mode})")
        while not self.stop.is_set():
            msgs = self.consumer.consume(num_messages=a.batch_records, timeout=0.1)
            for m in msgs:
                if m.error():
                    if m.error().code() != KafkaError._PARTITION_EOF:
                        log(self.label, f"consume error: {m.error()}")
                        if m.error().fatal():
                            self.fatal(m.error())
                    continue
                self.copy(m)
            self.producer.poll(0)
            if self.batch_records and (
                self.batch_records >= a.batch_records
                or time.time() - self.batch_started >= a.batch_ms / 1000.0
            ):
                self.finish_batch("batch")
            self.write_status()
        self.shutdown()

    def shutdown(self):
        log(self.label, "stopping: finishing the open batch")
        self.finish_batch("shutdown")
        self.write_status(force=True)
        t = time.time()
        self.consumer.close()  # LeaveGroup
        log(self.label, f"consumer closed (LeaveGroup) in {time.time() - t:.2f} s")
        self.producer.flush(self.a.op_timeout)
        self.assignment = []
        self.write_status(force=True)
        log(self.label, f"exit 0: copied {self.copied}, {self.committed_txns} committed, "
            f"{self.aborted_txns} aborted")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bootstrap", required=True)
    p.add_argument("--group", required=True)
    p.add_argument("--source", required=True)
    p.add_argument("--target", required=True)
    p.add_argument("--transactional-id", help="required for --mode eos")
    p.add_argument("--mode", choices=["eos", "alo"], default="eos")
    p.add_argument("--on-revoke", choices=["commit", "abort"], default="commit",
                   help="eos: what to do with a transaction open at revocation")
    p.add_argument("--label", help="instance name in logs and status (default: transactional id)")
    p.add_argument("--status-file")
    p.add_argument("--journal")
    p.add_argument("--debug", default="cgrp", help="librdkafka debug contexts ('' for none)")
    p.add_argument("--assignor", default="range")
    p.add_argument("--session-timeout-ms", type=int, default=6000)
    p.add_argument("--heartbeat-ms", type=int, default=1000)
    p.add_argument("--max-poll-interval-ms", type=int, default=15000)
    p.add_argument("--transaction-timeout-ms", type=int, default=60000)
    p.add_argument("--batch-records", type=int, default=200)
    p.add_argument("--batch-ms", type=int, default=200)
    p.add_argument("--op-timeout", type=float, default=10.0,
                   help="seconds for each transactional/flush/commit call")
    p.add_argument("--drain-timeout", type=float, default=25.0)
    a = p.parse_args()
    if a.mode == "eos" and not a.transactional_id:
        p.error("--mode eos needs --transactional-id")

    app = App(a)

    def on_signal(signum, _frame):
        if app.stop.is_set():
            return
        log(app.label, f"signal {signum}: draining (watchdog {a.drain_timeout:.0f} s)")
        app.stop.set()
        wd = threading.Timer(a.drain_timeout, lambda: (log(app.label, "drain timeout: exit 4"),
                                                        os._exit(4)))
        wd.daemon = True
        wd.start()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    app.run()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
