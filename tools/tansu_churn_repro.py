#!/usr/bin/env python3
"""Reproduces, with Apache Kafka's own client (confluent-kafka / librdkafka) and
nothing of fieldcrypt, the scale-out failures seen with fieldcrypt on the tansu
test broker, so each can be attributed to the broker or to fieldcrypt.

Subcommands (each starts its own tansu on a free port, in memory):

  churn        the scale-out churn with tests/interop/eos_reference.py instances:
               1 -> 3 instances, a SIGTERM restart, a kill -9 and its replacement
               (same transactional.id), a scale-down to 1, under a steady load
               (--rate records/s for --seconds, each with a unique "seq" header);
               --variant overlapping: the steps at fixed times, whatever state the
               group is in (a leader may leave mid-rebalance);
               --variant serialized: each step waits until the group has settled
               (every live instance re-assigned, all partitions held).
               Then an independent read_committed reader counts missing and
               duplicated sequence numbers; the instances' assignments are sampled
               (status files) to find stalls; librdkafka's debug=cgrp logs are
               parsed for JoinGroup responses naming a departed member as leader.
  leader-leave the minimal deterministic reproduction: consumers A and B in a
               group, C starts (a rebalance begins), the group LEADER closes
               (LeaveGroup) while C's join is pending; do the remaining two hold
               every partition within --deadline seconds? Controls:
               --scenario follower (a non-leader leaves instead), idle (the leader
               leaves with no rebalance in progress).
  txn-abort    read_committed visibility of aborted transactions: an explicit
               abort_transaction(), and a kill -9'd transactional producer fenced
               by a new one with the same transactional.id.
  all          runs all of the above --runs times and prints a summary table.

Everything a run writes (tansu's log, each instance's stderr with librdkafka's
debug log, status files, transaction journals, the assignment timeline, a JSON
report) goes under --out (default /tmp/tansu_churn/<time>). Every child is
killed on exit (and dies with this process: PR_SET_PDEATHSIG).

Examples:
  python3 tools/tansu_churn_repro.py txn-abort
  python3 tools/tansu_churn_repro.py leader-leave --runs 5
  python3 tools/tansu_churn_repro.py churn --variant overlapping --mode eos
  python3 tools/tansu_churn_repro.py all --runs 3
"""

import argparse
import atexit
import collections
import ctypes
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid

from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient, NewTopic

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TANSU = os.environ.get("FIELDCRYPT_TANSU", os.path.join(REPO, ".tools/bin/tansu"))
REFAPP = os.path.join(REPO, "tests/interop/eos_reference.py")

# --------------------------------------------------------------------------
# Children: every process started here is registered, killed on exit, and
# dies with us (PR_SET_PDEATHSIG) even if we are kill -9'd.
# --------------------------------------------------------------------------
_children = []
_children_lock = threading.Lock()
_libc = ctypes.CDLL(None, use_errno=True)


def _pdeathsig():
    _libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def spawn(args, log_path, env=None):
    out = open(log_path, "ab", buffering=0)
    p = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                         preexec_fn=_pdeathsig, env=env)
    out.close()
    with _children_lock:
        _children.append(p)
    return p


def kill_all():
    with _children_lock:
        procs = list(_children)
    for p in procs:
        if p.poll() is None:
            try:
                p.kill()
            except OSError:
                pass
    for p in procs:
        try:
            p.wait(5)
        except Exception:  # noqa: BLE001
            pass


atexit.register(kill_all)


def _on_signal(signum, _frame):
    kill_all()
    os._exit(128 + signum)


signal.signal(signal.SIGTERM, _on_signal)
signal.signal(signal.SIGINT, _on_signal)


def say(msg):
    print(f"{time.strftime('%H:%M:%S')} {msg}", flush=True)


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class Tansu:
    def __init__(self, outdir):
        self.port = free_port()
        url = f"tcp://127.0.0.1:{self.port}"
        self.log = os.path.join(outdir, "tansu.log")
        self.proc = spawn([TANSU, "broker", "--listener-url", url, "--advertised-listener-url",
                           url, "--storage-engine", "memory://tansu/"], self.log)
        deadline = time.time() + 20
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"tansu exited {self.proc.returncode}; see {self.log}")
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.2).close()
                break
            except OSError:
                if time.time() > deadline:
                    raise RuntimeError("tansu did not listen within 20 s")
                time.sleep(0.05)
        self.bootstrap = f"127.0.0.1:{self.port}"

    def stop(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)


def create_topics(bootstrap, topics):
    admin = AdminClient({"bootstrap.servers": bootstrap})
    fs = admin.create_topics([NewTopic(t, n, 1) for t, n in topics], operation_timeout=10)
    for t, f in fs.items():
        f.result(15)
    # Wait until metadata shows every partition.
    deadline = time.time() + 15
    while time.time() < deadline:
        md = admin.list_topics(timeout=5)
        if all(t in md.topics and len(md.topics[t].partitions) == n for t, n in topics):
            return
        time.sleep(0.1)
    raise RuntimeError(f"topics not visible: {topics}")


# --------------------------------------------------------------------------
# librdkafka debug log parsing
# --------------------------------------------------------------------------
# %7|1796666126.822|JOINGROUP|ref-a#consumer-1| [thrd:main]: JoinGroup response: GenerationId 3, ...
RDK_LINE = re.compile(r"^%(\d)\|(\d+\.\d+)\|([A-Z_]+)\|([^|]*)\|\s*(?:\[thrd:[^\]]*\]:\s*)?(.*)$")
JOIN_RESP = re.compile(r"JoinGroup response: GenerationId (-?\d+), Protocol (\S*), "
                       r"LeaderId (\S*?)(?: \(me\))?, my MemberId (\S*?), "
                       r"member metadata count (\d+)")


def parse_rdk(path):
    """Yields (ts, facility, client, message) of librdkafka log lines."""
    try:
        with open(path, errors="replace") as f:
            for line in f:
                m = RDK_LINE.match(line.rstrip("\n"))
                if m:
                    yield float(m.group(2)), m.group(3), m.group(4), m.group(5)
    except FileNotFoundError:
        return


def join_responses(path):
    out = []
    for ts, _fac, client, msg in parse_rdk(path):
        m = JOIN_RESP.search(msg)
        if m:
            out.append({"t": ts, "client": client, "generation": int(m.group(1)),
                        "leader": m.group(3), "me": m.group(4), "members": int(m.group(5))})
    return out


# A SyncGroup that did not deliver an assignment: an error response (tansu
# answers REBALANCE_IN_PROGRESS after ~5 s when no leader ever syncs) or a
# client-side timeout.
SYNC_FAIL = re.compile(r"SyncGroup response: (?!Success)|SyncGroup.*(timed out|_TIMED_OUT)", re.I)
LEAVE_SENT = re.compile(r"^Group \"[^\"]*\": leave \(in state")


def count_sync_timeouts(path):
    return sum(1 for _t, _f, _c, msg in parse_rdk(path) if SYNC_FAIL.search(msg))


def leave_time(path):
    """When the client sent LeaveGroup (librdkafka's LEAVE debug line)."""
    for ts, fac, _c, msg in parse_rdk(path):
        if fac == "LEAVE" and LEAVE_SENT.search(msg):
            return ts
    return None


def leader_analysis(instances, t0):
    """JoinGroup responses (from every instance's debug log) whose LeaderId is
    a member that had already left (LeaveGroup sent / process gone)."""
    member_of = {}   # member id -> instance label
    departed = {}    # member id -> time it left
    resps = []
    for inst in instances:
        rs = join_responses(inst.log)
        for r in rs:
            r["who"] = inst.label
            if r["me"]:
                member_of.setdefault(r["me"], inst.label)
        resps += rs
        gone = [x for x in (leave_time(inst.log), inst.killed_at, inst.ended) if x]
        if gone:
            for r in rs:
                if r["me"]:
                    departed[r["me"]] = min(departed.get(r["me"], 1e18), min(gone))
    resps.sort(key=lambda r: r["t"])
    # Any JoinGroup response after a member sent LeaveGroup (or was killed)
    # that names it leader: nobody will sync an assignment for that generation.
    stale = [r for r in resps if r["leader"] in departed and r["t"] > departed[r["leader"]]]
    gens = sorted({r["generation"] for r in stale})
    first = stale[0] if stale else None
    return {
        "join_responses": len(resps),
        "stale_leader_responses": len(stale),
        "stale_leader_generations": gens[:5] + (["..."] if len(gens) > 10 else []) + gens[-5:]
        if len(gens) > 10 else gens,
        "stale_leader_first": None if not first else {
            "t": round(first["t"] - t0, 1), "to": first["who"], "generation": first["generation"],
            "leader": first["leader"], "leader_is": member_of.get(first["leader"], "?"),
            "leader_left_at": round(departed[first["leader"]] - t0, 1)},
        "join_timeline": [{"t": round(r["t"] - t0, 2), "to": r["who"], "gen": r["generation"],
                           "leader": member_of.get(r["leader"], r["leader"]),
                           "members": r["members"]} for r in resps],
    }


# --------------------------------------------------------------------------
# The load
# --------------------------------------------------------------------------
class Load(threading.Thread):
    """Produces `rate` records/s for `seconds` to `topic`, header seq=<n>."""

    def __init__(self, bootstrap, topic, rate, seconds):
        super().__init__(daemon=True)
        self.topic, self.rate, self.seconds = topic, rate, seconds
        self.p = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True,
                           "linger.ms": 5, "client.id": "churn-load"})
        self.acked = set()
        self.ends = {}  # partition -> last acked offset + 1 (the source's end)
        self.failed = 0
        self.sent = 0
        self.error = None
        self.done = threading.Event()
        self.ended_at = None

    def _dr(self, seq):
        def dr(err, msg):
            if err is None:
                self.acked.add(seq)
                p = msg.partition()
                self.ends[p] = max(self.ends.get(p, 0), msg.offset() + 1)
            else:
                self.failed += 1
        return dr

    def run(self):
        try:
            self._run()
        except Exception as e:  # noqa: BLE001
            self.error = f"{type(e).__name__}: {e}"
            say(f"LOAD FAILED: {self.error}")
        finally:
            self.ended_at = self.ended_at or time.time()
            self.done.set()

    def _run(self):
        start = time.time()
        seq = 0
        pad = b"x" * 80
        while True:
            now = time.time()
            if now - start >= self.seconds:
                break
            due = int((now - start) * self.rate)
            while seq < due:
                try:
                    self.p.produce(self.topic, key=f"k{seq % 1000}".encode(),
                                   value=b"%d|" % seq + pad, headers=[("seq", str(seq).encode())],
                                   on_delivery=self._dr(seq))
                    seq += 1
                except BufferError:
                    self.p.poll(0.01)
            self.p.poll(0)
            time.sleep(0.01)
        self.sent = seq
        self.p.flush(30)
        self.ended_at = time.time()


# --------------------------------------------------------------------------
# Instances of the reference app
# --------------------------------------------------------------------------
class Instance:
    def __init__(self, run, slot, gen):
        self.run = run
        self.slot = slot
        self.label = f"{slot}{gen}"
        d = run.dir
        self.status_path = os.path.join(d, f"{self.label}.status.json")
        self.log = os.path.join(d, f"{self.label}.log")
        self.journal = os.path.join(d, f"{self.label}.journal")
        args = [sys.executable, REFAPP, "--bootstrap", run.bootstrap, "--group", run.group,
                "--source", run.source, "--target", run.target, "--mode", run.a.mode,
                "--transactional-id", f"{run.group}-{slot}", "--label", self.label,
                "--on-revoke", run.a.on_revoke, "--status-file", self.status_path,
                "--journal", self.journal, "--debug", run.a.debug,
                "--session-timeout-ms", str(run.a.session_timeout_ms),
                "--heartbeat-ms", str(run.a.heartbeat_ms),
                "--max-poll-interval-ms", str(run.a.max_poll_interval_ms),
                "--assignor", run.a.assignor]
        self.started = time.time()
        self.proc = spawn(args, self.log)
        self.ended = None
        self.killed_at = None
        self.how = None
        self.exit = None
        self.stop_took = None

    def alive(self):
        if self.proc.poll() is None:
            return True
        if self.ended is None:
            self.ended = time.time()
            self.exit = self.proc.returncode
        return False

    def status(self):
        try:
            with open(self.status_path) as f:
                return json.load(f)
        except (FileNotFoundError, ValueError):
            return None

    def sigterm(self, wait=True, grace=30):
        self.how = "SIGTERM"
        t = time.time()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        if wait:
            self.wait_exit(grace)
            self.stop_took = time.time() - t

    def wait_exit(self, grace=30):
        try:
            self.proc.wait(grace)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
            self.how = (self.how or "") + "+killed after grace"
        self.alive()

    def kill9(self):
        self.how = "kill -9"
        self.killed_at = time.time()
        self.proc.kill()
        self.proc.wait(5)
        self.alive()


class Monitor(threading.Thread):
    """Samples every live instance's status file (assignments) every 0.25 s,
    the group's committed offsets and the source's end offsets (pending
    records) every 0.5 s, and the broker's view (describe_consumer_groups)
    every 2 s."""

    def __init__(self, run):
        super().__init__(daemon=True)
        self.cr = run
        self.stop = threading.Event()
        self.samples = []        # (t, {label: assignment}, pending or None)
        self.changes = []        # printable assignment-change lines
        self.broker_view = []    # (t, state, members, assigned partitions)
        self.pending = None
        self.committed_total = None
        self.c = Consumer({"bootstrap.servers": run.bootstrap, "group.id": run.group,
                           "enable.auto.commit": False, "client.id": "churn-monitor"})
        self.admin = AdminClient({"bootstrap.servers": run.bootstrap})
        self.tps = [TopicPartition(run.source, p) for p in range(run.partitions)]

    def _pending(self):
        """Source records not yet consumed-and-committed by the group: the
        source's end (from the load's delivery reports: tansu 0.6.0's
        ListOffsets(latest) answers the last batch's base offset + 1, not the
        high watermark) minus the group's committed offsets."""
        try:
            com = self.c.committed(self.tps, timeout=3)
            ends = dict(self.cr.load.ends) if self.cr.load else {}
            total_com = sum(max(c.offset, 0) for c in com)
            self.committed_total = total_com
            return sum(ends.values()) - total_com
        except Exception:  # noqa: BLE001 - a timeout under load: no sample
            return None

    def _describe(self):
        try:
            d = self.cr.admin.describe_consumer_groups([self.cr.group],
                                                        request_timeout=3)[self.cr.group].result(4)
            parts = sum(len(m.assignment.topic_partitions) for m in d.members if m.assignment)
            return str(d.state).split(".")[-1], len(d.members), parts
        except Exception as e:  # noqa: BLE001
            return f"error:{type(e).__name__}", None, None

    def run(self):  # noqa: C901
        last = None
        next_pending = 0
        next_describe = 0
        while not self.stop.is_set():
            now = time.time()
            if now >= next_pending:
                self.pending = self._pending()
                next_pending = now + 0.5
            if now >= next_describe and self.cr.a.describe:
                self.broker_view.append((now,) + self._describe())
                next_describe = now + 2
            view = {}
            for inst in list(self.cr.instances):
                if inst.alive():
                    st = inst.status()
                    view[inst.label] = tuple(st["assignment"]) if st else ()
            self.samples.append((now, view, self.pending))
            key = tuple(sorted(view.items()))
            if key != last:
                last = key
                line = (f"t={now - self.cr.t0:7.2f}s pending={self.pending} " +
                        " ".join(f"{k}:{list(v)}" for k, v in sorted(view.items())))
                self.changes.append(line)
                if self.cr.a.verbose:
                    say("  " + line)
            time.sleep(0.25)

    def coverage(self):
        """Union of live instances' assignments, from the latest sample."""
        if not self.samples:
            return set()
        return set(p for v in self.samples[-1][1].values() for p in v)

    def longest(self, pred, start, end):
        """Longest time span within [start, end] over which pred(sample) held
        for every sample."""
        best, since, best_at = 0.0, None, None
        for t, view, pending in self.samples:
            if t < start or t > end:
                continue
            if pred(view, pending):
                if since is None:
                    since = t
                if t - since > best:
                    best, best_at = t - since, since
            else:
                since = None
        return best, best_at


class ChurnRun:
    def __init__(self, a, outdir, name):
        self.a = a
        self.dir = os.path.join(outdir, name)
        os.makedirs(self.dir, exist_ok=True)
        self.name = name
        self.partitions = a.partitions
        self.group = f"churn-{uuid.uuid4().hex[:6]}"
        self.source, self.target = "churn", "churn.out"
        self.instances = []
        self.load = None
        self.events = []
        self.settles = []
        self.t0 = time.time()

    def start(self, slot, gen):
        inst = Instance(self, slot, gen)
        self.instances.append(inst)
        self.event(f"start {inst.label}")
        return inst

    def event(self, what):
        self.events.append((time.time(), what))
        say(f"  [{self.name}] t={time.time() - self.t0:6.1f}s {what}")

    def group_state(self):
        out = {}
        for inst in self.instances:
            if inst.alive():
                st = inst.status()
                out[inst.label] = (st or {}).get("assigns", 0)
        return out

    def settled(self, before, what, timeout=60):
        """Waits until every live instance has been assigned since `before`
        and together they hold every partition (disjointly), for 0.5 s."""
        t = time.time()
        steady = None
        while time.time() - t < timeout:
            ok = True
            held = []
            live = [i for i in self.instances if i.alive()]
            for inst in live:
                st = inst.status() or {}
                if st.get("assigns", 0) <= before.get(inst.label, 0) or st.get("stopping"):
                    ok = False
                held += st.get("assignment", [])
            if ok and live and sorted(held) == list(range(self.partitions)):
                steady = steady or time.time()
                if time.time() - steady >= 0.5:
                    took = steady - t
                    self.settles.append((what, round(took, 1)))
                    say(f"  [{self.name}] settled after {what} in {took:.1f} s")
                    return True
            else:
                steady = None
            time.sleep(0.1)
        self.settles.append((what, None))
        say(f"  [{self.name}] NOT settled {timeout} s after {what}")
        return False

    def at(self, frac):
        target = self.t0 + self.a.seconds * frac
        while time.time() < target:
            time.sleep(min(0.1, target - time.time()) if target > time.time() else 0)

    # -- the scenario ------------------------------------------------------
    def run(self):  # noqa: C901
        a = self.a
        self.broker = Tansu(self.dir)
        self.bootstrap = self.broker.bootstrap
        self.admin = AdminClient({"bootstrap.servers": self.bootstrap})
        try:
            create_topics(self.bootstrap, [(self.source, self.partitions),
                                           (self.target, self.partitions)])
            serialized = a.variant == "serialized"
            self.t0 = time.time()
            mon = self.monitor = Monitor(self)
            mon.start()
            ia = self.start("a", 1)
            self.settled({}, "start of a1")
            load = self.load = Load(self.bootstrap, self.source, a.rate, a.seconds)
            self.t0 = time.time()
            load.start()
            self.event(f"load started ({a.rate}/s for {a.seconds} s)")

            self.at(1 / 6)
            before = self.group_state()
            ib = self.start("b", 1)
            ic = self.start("c", 1)
            if serialized:
                self.settled(before, "1 -> 3")

            self.at(2 / 6)
            before = self.group_state()
            if not serialized and a.restart == "surge":
                # A Deployment's RollingUpdate (maxSurge): the new pod starts,
                # then the old one is stopped while the new one's join is
                # pending, i.e. during the rebalance it began.
                old = ia
                revokes = (old.status() or {}).get("revokes", 0)
                ia = self.start("a", 2)
                seen = wait_for(lambda: (old.status() or {}).get("revokes", 0) > revokes, 15, 0.02)
                self.event(f"SIGTERM a1 (surge restart; a1 {'saw' if seen else 'did NOT see'} "
                           f"the rebalance a2 began)")
                old.sigterm()
                self.event(f"a1 exited {old.exit} in {old.stop_took:.1f} s")
            else:
                self.event("SIGTERM a1 (restart)")
                ia.sigterm()
                self.event(f"a1 exited {ia.exit} in {ia.stop_took:.1f} s")
                if serialized:
                    self.settled(before, "a1 gone")
                    before = self.group_state()
                ia = self.start("a", 2)
                if serialized:
                    self.settled(before, "a2 started")

            self.at(3 / 6)
            before = self.group_state()
            self.event("kill -9 b1")
            ib.kill9()
            if serialized:
                self.settled(before, "b1 killed")
                before = self.group_state()
            ib = self.start("b", 2)
            if serialized:
                self.settled(before, "b2 started (fences b1's transactional.id)")

            self.at(4 / 6)
            before = self.group_state()
            if serialized:
                self.event("SIGTERM c1")
                ic.sigterm()
                self.event(f"c1 exited {ic.exit} in {ic.stop_took:.1f} s")
                self.settled(before, "c1 gone")
                before = self.group_state()
                self.event("SIGTERM b2")
                ib.sigterm()
                self.event(f"b2 exited {ib.exit} in {ib.stop_took:.1f} s")
                self.settled(before, "b2 gone")
            else:
                self.event("SIGTERM c1 and b2 (scale 3 -> 1)")
                ic.sigterm(wait=False)
                ib.sigterm(wait=False)
                t = time.time()
                ic.wait_exit(30)
                ib.wait_exit(30)
                ic.stop_took = ib.stop_took = time.time() - t
                self.event(f"c1 exited {ic.exit}, b2 exited {ib.exit} "
                           f"({time.time() - t:.1f} s)")

            load.done.wait(a.seconds + 60)
            if load.error:
                raise RuntimeError(f"the load failed: {load.error}")
            load_end = load.ended_at or time.time()
            expected = load.acked
            self.event(f"load done: {len(expected)} acked of {load.sent} sent "
                       f"({load.failed} failed)")
            # The survivor drains the backlog.
            t = time.time()
            drained = False
            while time.time() - t < a.drain_timeout:
                if mon.pending == 0 and mon.committed_total and mon.committed_total >= len(load.acked):
                    drained = True
                    break
                if not ia.alive():
                    break
                time.sleep(0.5)
            drain_end = time.time()
            self.event(f"drained={drained} (pending {mon.pending}) after "
                       f"{drain_end - t:.1f} s")
            mon.stop.set()
            mon.join(10)
            ia.sigterm()
            self.event(f"a2 exited {ia.exit} in {ia.stop_took:.1f} s")

            verify = verify_target(self.bootstrap, self.target, self.partitions, expected,
                                   self.dir, self.instances, a.verify_timeout)
            report = self.report(load_end, drain_end, drained, verify, expected, load)
        finally:
            kill_these = [i for i in self.instances if i.alive()]
            for i in kill_these:
                i.kill9()
            self.broker.stop()
        with open(os.path.join(self.dir, "report.json"), "w") as f:
            json.dump(report, f, indent=1)
        with open(os.path.join(self.dir, "assignments.log"), "w") as f:
            f.write("\n".join(self.monitor.changes) + "\n")
        return report

    def report(self, load_end, drain_end, drained, verify, expected, load):
        mon = self.monitor
        t0 = self.t0
        start, end = t0, drain_end

        def nobody(view, pending):
            return not any(view.values()) and (pending is None or pending > 0)

        def partial(view, pending):
            held = set(p for v in view.values() for p in v)
            return len(held) < self.partitions and (pending is None or pending > 0)

        none_s, none_at = mon.longest(nobody, start, end)
        part_s, part_at = mon.longest(partial, start, end)
        la = leader_analysis(self.instances, t0)
        sync_to = sum(count_sync_timeouts(i.log) for i in self.instances)
        stall = none_s > self.a.stall_seconds
        r = {
            "name": self.name, "variant": self.a.variant, "restart": self.a.restart, "mode": self.a.mode,
            "on_revoke": self.a.on_revoke, "dir": self.dir,
            "expected": len(expected), "load_sent": load.sent,
            "seen_unique": verify["unique"], "missing": verify["missing"],
            "duplicates": verify["duplicates"], "copies_total": verify["copies"],
            "copies_by_txn_state": verify["by_state"],
            "dup_extra_copies_by_txn_state": verify["dup_by_state"],
            "read_uncommitted_records": verify["uncommitted_records"],
            "verify_complete": verify["complete"],
            "drained": drained, "drain_seconds_after_load": round(drain_end - load_end, 1),
            "longest_no_partition_assigned_s": round(none_s, 1),
            "longest_no_partition_assigned_from_t": None if none_at is None else round(none_at - t0, 1),
            "longest_incomplete_coverage_s": round(part_s, 1),
            "longest_incomplete_coverage_from_t": None if part_at is None else round(part_at - t0, 1),
            "stall": stall,
            "sync_group_failures_logged": sync_to,
            "stale_leader_join_responses": la["stale_leader_responses"],
            "stale_leader_generations": la["stale_leader_generations"],
            "stale_leader_first": la["stale_leader_first"],
            "settles": self.settles,
            "stops": [(i.label, i.how, i.exit, None if i.stop_took is None else round(i.stop_took, 1))
                      for i in self.instances if i.how],
            "events": [(round(t - t0, 1), w) for t, w in self.events],
            "broker_view": [(round(t - t0, 1), s, m, p) for t, s, m, p in mon.broker_view],
        }
        with open(os.path.join(self.dir, "join_timeline.json"), "w") as f:
            json.dump(la["join_timeline"], f, indent=0)
        return r


def journal_states(instances):
    st = {}
    for inst in instances:
        try:
            with open(inst.journal) as f:
                for line in f:
                    parts = line.split()
                    if len(parts) >= 3:
                        st[parts[2]] = parts[1]
        except FileNotFoundError:
            pass
    return st


def verify_target(bootstrap, topic, partitions, expected, d, instances, timeout):
    """An independent read_committed reader: every record of `topic`, counted
    by the source's seq header; copies classified by the state the writing
    instance journaled for their transaction (commit / abort / unknown = the
    instance died with it open)."""
    states = journal_states(instances)
    res = {}
    for iso in ("read_committed", "read_uncommitted"):
        c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"verify-{uuid.uuid4().hex[:6]}",
                      "isolation.level": iso, "enable.auto.commit": False,
                      "enable.partition.eof": True, "client.id": f"verify-{iso}"})
        tps = [TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(partitions)]
        his = {p: c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
               for p in range(partitions)}
        c.assign(tps)
        seqs = collections.Counter()
        by_state = collections.Counter()
        copies = collections.defaultdict(list)
        eof = set()
        t = time.time()
        last_new = time.time()
        n = 0
        while time.time() - t < timeout:
            msgs = c.consume(500, 0.5)
            for m in msgs:
                if m.error():
                    if m.error().code() == KafkaError._PARTITION_EOF:
                        if m.offset() >= his[m.partition()]:
                            eof.add(m.partition())
                    continue
                n += 1
                last_new = time.time()
                h = dict(m.headers() or [])
                s = int(h["seq"])
                seqs[s] += 1
                txn = h.get("ref.txn", b"?").decode()
                state = states.get(txn, "unknown")
                by_state[state] += 1
                copies[s].append(state)
            if len(eof) == partitions:
                break
            if expected and set(seqs) >= expected and time.time() - last_new > 3:
                break
            if time.time() - last_new > 15:
                break
        c.close()
        res[iso] = (seqs, by_state, copies, len(eof) == partitions, n)
    seqs, by_state, copies, complete, n = res["read_committed"]
    dup_by_state = collections.Counter()
    for s, states_of in copies.items():
        if len(states_of) > 1:
            # Which copies are extra: prefer to call the committed one the
            # original.
            rest = list(states_of)
            if "commit" in rest:
                rest.remove("commit")
            else:
                rest.pop(0)
            for x in rest:
                dup_by_state[x] += 1
    missing = len(expected - set(seqs))
    return {
        "unique": len(seqs), "copies": n, "missing": missing,
        "duplicates": sum(v - 1 for v in seqs.values() if v > 1),
        "by_state": dict(by_state), "dup_by_state": dict(dup_by_state),
        "complete": complete, "uncommitted_records": res["read_uncommitted"][4],
    }


# --------------------------------------------------------------------------
# leader-leave: the minimal deterministic reproduction
# --------------------------------------------------------------------------
MEMBER_SRC = r'''
import json, os, signal, sys, time
from confluent_kafka import Consumer
bootstrap, group, topic, label, status, session, hb = sys.argv[1:8]
stop = []
signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
st = {"assigns": 0, "revokes": 0, "assignment": [], "member_id": None}
def write():
    st["t"] = time.time(); st["label"] = label
    try: st["member_id"] = c.memberid()
    except Exception: pass
    with open(status + ".tmp", "w") as f: json.dump(st, f)
    os.replace(status + ".tmp", status)
def on_assign(_c, parts):
    st["assigns"] += 1; st["assignment"] = sorted(p.partition for p in parts); write()
    sys.stderr.write(f"REF {time.time():.3f} [{label}] ASSIGN {st['assignment']}\n")
def on_revoke(_c, parts):
    st["revokes"] += 1; st["assignment"] = []; write()
    sys.stderr.write(f"REF {time.time():.3f} [{label}] REVOKE {sorted(p.partition for p in parts)}\n")
c = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "client.id": "m-" + label,
              "partition.assignment.strategy": "range", "session.timeout.ms": int(session),
              "heartbeat.interval.ms": int(hb), "enable.auto.commit": False, "debug": "cgrp"})
c.subscribe([topic], on_assign=on_assign, on_revoke=on_revoke)
write()
while not stop:
    c.poll(0.1); write()
sys.stderr.write(f"REF {time.time():.3f} [{label}] closing (LeaveGroup)\n"); sys.stderr.flush()
t = time.time(); c.close()
st["assignment"] = []; st["closed"] = True; write()
sys.stderr.write(f"REF {time.time():.3f} [{label}] closed in {time.time()-t:.2f} s\n")
'''


class Member:
    def __init__(self, d, bootstrap, group, topic, label, a):
        self.label = label
        self.status_path = os.path.join(d, f"{label}.status.json")
        self.log = os.path.join(d, f"{label}.log")
        self.proc = spawn([sys.executable, "-c", MEMBER_SRC, bootstrap, group, topic, label,
                           self.status_path, str(a.session_timeout_ms), str(a.heartbeat_ms)],
                          self.log)
        self.ended = None

    def status(self):
        try:
            with open(self.status_path) as f:
                return json.load(f)
        except (FileNotFoundError, ValueError):
            return {}

    def alive(self):
        if self.proc.poll() is None:
            return True
        if self.ended is None:
            self.ended = time.time()
        return False

    def close(self):
        self.proc.send_signal(signal.SIGTERM)


def wait_for(pred, timeout, step=0.05):
    t = time.time()
    while time.time() - t < timeout:
        v = pred()
        if v:
            return v
        time.sleep(step)
    return None


def leader_leave_once(a, outdir, name, scenario):
    d = os.path.join(outdir, name)
    os.makedirs(d, exist_ok=True)
    broker = Tansu(d)
    P = a.partitions
    result = {"name": name, "scenario": scenario, "dir": d}
    members = {}
    try:
        create_topics(broker.bootstrap, [("ll", P)])
        group = f"ll-{uuid.uuid4().hex[:6]}"
        t0 = time.time()
        mk = lambda lbl: members.setdefault(lbl, Member(d, broker.bootstrap, group, "ll", lbl, a))  # noqa: E731
        A = mk("A")
        if not wait_for(lambda: len(A.status().get("assignment", [])) == P, 30):
            raise RuntimeError("A did not get every partition within 30 s")
        B = mk("B")
        ok = wait_for(lambda: sorted(A.status().get("assignment", []) + B.status().get("assignment", []))
                      == list(range(P)) and B.status().get("assigns", 0) >= 1
                      and A.status().get("assigns", 0) >= 2, 30)
        if not ok:
            raise RuntimeError("A and B did not share the partitions within 30 s")
        time.sleep(0.5)
        # Who leads the current generation?
        jr = sorted(join_responses(A.log) + join_responses(B.log), key=lambda r: r["t"])
        last_gen = max(r["generation"] for r in jr)
        leader_id = [r["leader"] for r in jr if r["generation"] == last_gen][0]
        ids = {A.status().get("member_id"): "A", B.status().get("member_id"): "B"}
        leader = ids.get(leader_id, "?")
        result["leader_before"] = leader
        result["generation_before"] = last_gen
        if leader not in ("A", "B"):
            raise RuntimeError(f"cannot tell the leader: {leader_id} not in {ids}")
        follower = "B" if leader == "A" else "A"
        L, F = members[leader], members[follower]
        leaver = L if scenario in ("leader", "idle") else F
        stayer = F if leaver is L else L
        result["leaver"] = "leader " + leaver.label if leaver is L else "follower " + leaver.label
        revokes_before = leaver.status().get("revokes", 0)
        if scenario == "idle":
            t_close = time.time()
            leaver.close()
            remaining = [stayer]
        else:
            C = mk("C")
            t_c = time.time()
            if a.trigger == "revoke":
                # The rebalance has begun for the leaver (REBALANCE_IN_PROGRESS
                # on its heartbeat: it revoked and is about to rejoin).
                seen = wait_for(lambda: leaver.status().get("revokes", 0) > revokes_before, 15, 0.01)
                result["rebalance_seen_after_s"] = None if not seen else round(time.time() - t_c, 2)
            else:
                time.sleep(a.trigger_delay)
            t_close = time.time()
            leaver.close()
            remaining = [stayer, C]
        result["close_at_s"] = round(t_close - t0, 2)
        wait_for(lambda: not leaver.alive(), 30)
        result["leaver_closed_in_s"] = round((leaver.ended or time.time()) - t_close, 2)

        def covered():
            sts = [m.status() for m in remaining]
            held = sorted(p for s in sts for p in s.get("assignment", []))
            return held == list(range(P)) and all(s.get("assigns", 0) >= 1 for s in sts)

        def recovered():
            # Every remaining member assigned after the close, together all.
            if not covered():
                return False
            for m in remaining:
                if m is stayer and m.status().get("t", 0) < t_close:
                    return False
            return True

        ok = wait_for(recovered, a.deadline, 0.1)
        # A stayer that was never revoked (idle scenario) still holds its old
        # partitions; require a re-assignment: its assigns count must grow.
        result["recovered"] = bool(ok)
        result["recovered_after_s"] = round(time.time() - t_close, 1) if ok else None
        if ok:
            time.sleep(1.0)
        result["final_assignment"] = {m.label: m.status().get("assignment") for m in remaining}
        ids = {}
        for m in members.values():
            for r in join_responses(m.log):
                ids.setdefault(r["me"], m.label)
        resps = []
        for m in members.values():
            for r in join_responses(m.log):
                r["to"] = m.label
                resps.append(r)
        resps.sort(key=lambda r: r["t"])
        after = [r for r in resps if r["t"] > t_close]
        result["join_responses_after_close"] = [
            {"t": round(r["t"] - t_close, 2), "to": r["to"], "gen": r["generation"],
             "leader": ids.get(r["leader"], r["leader"]), "members": r["members"]} for r in after][:12]
        result["stale_leader_responses"] = sum(1 for r in after if ids.get(r["leader"]) == leaver.label)
        result["sync_group_failures"] = sum(count_sync_timeouts(m.log) for m in members.values())
    except Exception as e:  # noqa: BLE001
        result["error"] = f"{type(e).__name__}: {e}"
    finally:
        for m in members.values():
            if m.alive():
                m.proc.kill()
        broker.stop()
    with open(os.path.join(d, "report.json"), "w") as f:
        json.dump(result, f, indent=1)
    return result


# --------------------------------------------------------------------------
# txn-abort
# --------------------------------------------------------------------------
TXN_CHILD = r'''
import sys, time
from confluent_kafka import Producer
bootstrap, topic, tid, n = sys.argv[1:5]
p = Producer({"bootstrap.servers": bootstrap, "transactional.id": tid})
p.init_transactions(15)
p.begin_transaction()
for i in range(int(n)):
    p.produce(topic, key=b"k", value=b"killed-%d" % i)
p.flush(15)
print("ready", flush=True)
time.sleep(600)
'''


def read_all(bootstrap, topic, partitions, iso, timeout=20):
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"v-{uuid.uuid4().hex[:6]}",
                  "isolation.level": iso, "enable.auto.commit": False,
                  "enable.partition.eof": True})
    c.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(partitions)])
    vals = collections.Counter()
    eof = set()
    t = time.time()
    while time.time() - t < timeout and len(eof) < partitions:
        for m in c.consume(100, 0.5):
            if m.error():
                if m.error().code() == KafkaError._PARTITION_EOF:
                    eof.add(m.partition())
                continue
            vals[m.value().split(b"-")[0].decode()] += 1
    c.close()
    return dict(vals), len(eof) == partitions


def txn_abort(a, outdir):
    d = os.path.join(outdir, "txn-abort")
    os.makedirs(d, exist_ok=True)
    broker = Tansu(d)
    out = {"dir": d}
    try:
        bs = broker.bootstrap
        create_topics(bs, [("abort1", 1), ("abort2", 1)])
        # 1. explicit abort
        p = Producer({"bootstrap.servers": bs, "transactional.id": "ta-1"})
        p.init_transactions(15)
        p.begin_transaction()
        for i in range(10):
            p.produce("abort1", key=b"k", value=b"aborted-%d" % i)
        p.flush(15)
        p.abort_transaction(15)
        p.begin_transaction()
        for i in range(10):
            p.produce("abort1", key=b"k", value=b"committed-%d" % i)
        p.commit_transaction(15)
        out["explicit_abort"] = {
            "wrote": "10 aborted, then 10 committed",
            "read_committed": read_all(bs, "abort1", 1, "read_committed"),
            "read_uncommitted": read_all(bs, "abort1", 1, "read_uncommitted"),
        }
        # 2. kill -9 mid-transaction, fenced by a new producer (same id)
        child = spawn([sys.executable, "-c", TXN_CHILD, bs, "abort2", "ta-2", "10"],
                      os.path.join(d, "killed_producer.log"))
        ok = wait_for(lambda: "ready" in open(os.path.join(d, "killed_producer.log")).read(), 30)
        if not ok:
            raise RuntimeError("the transactional child did not get ready")
        child.kill()
        child.wait(5)
        p2 = Producer({"bootstrap.servers": bs, "transactional.id": "ta-2"})
        t = time.time()
        p2.init_transactions(30)
        fence_s = time.time() - t
        p2.begin_transaction()
        for i in range(10):
            p2.produce("abort2", key=b"k", value=b"committed-%d" % i)
        p2.commit_transaction(15)
        out["killed_and_fenced"] = {
            "wrote": "10 in a transaction left open by a kill -9, fenced by init_transactions "
                     f"of a new producer ({fence_s:.1f} s), then 10 committed",
            "read_committed": read_all(bs, "abort2", 1, "read_committed"),
            "read_uncommitted": read_all(bs, "abort2", 1, "read_uncommitted"),
        }
        del p, p2  # destroyed while the broker is still up (no disconnect noise)
    except Exception as e:  # noqa: BLE001
        out["error"] = f"{type(e).__name__}: {e}"
    finally:
        broker.stop()
    with open(os.path.join(d, "report.json"), "w") as f:
        json.dump(out, f, indent=1)
    return out


# --------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------
def churn_cmd(a, outdir, run_no=1):
    variant = a.variant + ("-surge" if a.variant == "overlapping" and a.restart == "surge" else "")
    name = f"churn-{variant}-{a.mode}{'-abort' if a.on_revoke == 'abort' else ''}-{run_no}"
    say(f"churn {name}")
    try:
        r = ChurnRun(a, outdir, name).run()
    except Exception as e:  # noqa: BLE001 - one broken run does not end the series
        say(f"== {name}: HARNESS ERROR {type(e).__name__}: {e}")
        return {"name": name, "error": f"{type(e).__name__}: {e}"}
    print_churn(r)
    return r


def print_churn(r):
    say(f"== {r['name']}: expected {r['expected']}, missing {r['missing']}, duplicates "
        f"{r['duplicates']}, stall {'YES' if r['stall'] else 'no'} (longest with no partition "
        f"assigned while records pending: {r['longest_no_partition_assigned_s']} s from "
        f"t={r['longest_no_partition_assigned_from_t']}; incomplete coverage "
        f"{r['longest_incomplete_coverage_s']} s), drained {r['drained']}, "
        f"JoinGroup responses naming a departed leader: {r['stale_leader_join_responses']}, "
        f"SyncGroup failures (error/timeout) logged: {r['sync_group_failures_logged']}")
    say(f"   copies by writer's transaction state: {r['copies_by_txn_state']}; extra copies: "
        f"{r['dup_extra_copies_by_txn_state']}; read_uncommitted records: "
        f"{r['read_uncommitted_records']}; settles: {r['settles']}")
    if r["stale_leader_first"]:
        say(f"   first stale-leader JoinGroup response: {r['stale_leader_first']}")
    say(f"   files: {r['dir']}")


def leader_leave_cmd(a, outdir, scenarios, runs):
    results = []
    for sc in scenarios:
        for i in range(1, runs + 1):
            name = f"leader-leave-{sc}-{i}"
            say(f"{name}")
            r = leader_leave_once(a, outdir, name, sc)
            results.append(r)
            say(f"== {name}: leaver={r.get('leaver')} recovered={r.get('recovered')} "
                f"after={r.get('recovered_after_s')} s, JoinGroup responses naming the departed "
                f"member as leader: {r.get('stale_leader_responses')}, SyncGroup failures "
                f"{r.get('sync_group_failures')} {r.get('error', '')}")
            for j in (r.get("join_responses_after_close") or [])[:6]:
                say(f"     {j}")
    return results


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("cmd", choices=["churn", "leader-leave", "txn-abort", "all"])
    p.add_argument("--out", default=os.path.join("/tmp/tansu_churn", time.strftime("%Y%m%d-%H%M%S")))
    p.add_argument("--runs", type=int, default=1)
    p.add_argument("--variant", choices=["overlapping", "serialized"], default="overlapping")
    p.add_argument("--mode", choices=["eos", "alo"], default="eos")
    p.add_argument("--on-revoke", choices=["commit", "abort"], default="commit")
    p.add_argument("--restart", choices=["replace", "surge"], default="replace",
                   help="overlapping: the restart of a1 stops it, waits for its exit, then "
                        "starts a2 (replace), or starts a2 first and stops a1 once a1 has seen "
                        "the rebalance a2 began (surge, as a RollingUpdate with maxSurge)")
    p.add_argument("--partitions", type=int, default=6)
    p.add_argument("--rate", type=int, default=500)
    p.add_argument("--seconds", type=int, default=40)
    p.add_argument("--session-timeout-ms", type=int, default=6000)
    p.add_argument("--heartbeat-ms", type=int, default=1000)
    p.add_argument("--max-poll-interval-ms", type=int, default=15000)
    p.add_argument("--assignor", default="range")
    p.add_argument("--debug", default="cgrp", help="librdkafka debug contexts of the instances")
    p.add_argument("--drain-timeout", type=float, default=120)
    p.add_argument("--verify-timeout", type=float, default=60)
    p.add_argument("--stall-seconds", type=float, default=30)
    p.add_argument("--no-describe", dest="describe", action="store_false",
                   help="do not sample describe_consumer_groups")
    p.add_argument("--verbose", action="store_true", help="print every assignment change")
    p.add_argument("--scenario", choices=["leader", "follower", "idle", "all"], default="all",
                   help="leader-leave: who leaves, and whether a rebalance is in progress")
    p.add_argument("--trigger", choices=["revoke", "delay"], default="revoke",
                   help="leader-leave: close when the leaver has seen the rebalance (revoke), "
                        "or --trigger-delay s after C started")
    p.add_argument("--trigger-delay", type=float, default=0.5)
    p.add_argument("--deadline", type=float, default=30)
    a = p.parse_args()
    os.makedirs(a.out, exist_ok=True)
    say(f"output in {a.out}")
    scenarios = ["leader", "follower", "idle"] if a.scenario == "all" else [a.scenario]
    summary = {}
    if a.cmd in ("txn-abort", "all"):
        r = txn_abort(a, a.out)
        summary["txn_abort"] = r
        say(f"== txn-abort: {json.dumps(r)}")
    if a.cmd in ("leader-leave", "all"):
        summary["leader_leave"] = leader_leave_cmd(a, a.out, scenarios, a.runs)
    if a.cmd == "churn":
        summary["churn"] = [churn_cmd(a, a.out, i) for i in range(1, a.runs + 1)]
    if a.cmd == "all":
        summary["churn"] = []
        for variant, restart in (("overlapping", "replace"), ("overlapping", "surge"),
                                 ("serialized", "replace")):
            a.variant, a.restart = variant, restart
            for i in range(1, a.runs + 1):
                summary["churn"].append(churn_cmd(a, a.out, i))
    with open(os.path.join(a.out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1, default=str)
    print_summary(summary)


def print_summary(s):
    print("\nSUMMARY")
    if "txn_abort" in s:
        t = s["txn_abort"]
        for k in ("explicit_abort", "killed_and_fenced"):
            if k in t:
                print(f"  txn-abort {k}: read_committed sees {t[k]['read_committed'][0]} "
                      f"(read_uncommitted {t[k]['read_uncommitted'][0]})")
    if s.get("leader_leave"):
        print("  leader-leave: scenario | recovered in deadline | after s | stale-leader "
              "JoinGroup responses | SyncGroup failures")
        for r in s["leader_leave"]:
            print(f"    {r['name']:<26} {str(r.get('recovered')):<6} {str(r.get('recovered_after_s')):<6} "
                  f"{str(r.get('stale_leader_responses')):<4} {r.get('sync_group_failures')} "
                  f"{r.get('error', '')}")
    if s.get("churn"):
        print("  churn: run | expected | missing | duplicates (extra copies by txn state) | "
              "stall (longest no-partition s) | stale-leader responses | drained")
        for r in s["churn"]:
            if "error" in r:
                print(f"    {r['name']:<28} ERROR {r['error']}")
                continue
            print(f"    {r['name']:<28} {r['expected']:>6} {r['missing']:>6} {r['duplicates']:>5} "
                  f"{str(r['dup_extra_copies_by_txn_state']):<30} "
                  f"{'YES' if r['stall'] else 'no '} ({r['longest_no_partition_assigned_s']}) "
                  f"{r['stale_leader_join_responses']:>4} {r['drained']}")


if __name__ == "__main__":
    main()
