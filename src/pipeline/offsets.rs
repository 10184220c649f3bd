//! Offset bookkeeping: records of a partition finish out of order (deliveries
//! complete concurrently), but the offset stored for commit may only advance past a
//! record once it and every earlier record of the partition are delivered. It also
//! knows which records this instance still owns (a revoked or rewound partition's
//! records are not), and, for exactly-once, what the last transaction committed.

use std::collections::VecDeque;

type Map<K, V> = foldhash::HashMap<K, V>;

/// Per-partition in-flight offsets.
#[derive(Debug, Default)]
pub struct OffsetTracker {
    /// topic → partition → state (nested so lookups by `&str` need no allocation).
    parts: Map<String, Map<i32, Partition>>,
    /// Source of partition epochs: a partition taken again after a revoke or
    /// rewind gets a new epoch, so records of its earlier life are told apart.
    epochs: u64,
}

#[derive(Debug, Default)]
struct Partition {
    /// Offsets taken and not yet released, in order (a partition is read in
    /// offset order), each with whether it is done; done ones leave from the front.
    pending: VecDeque<(i64, bool)>,
    /// Entries of `pending` not done.
    open: usize,
    max_seen: i64,
    stored: i64,
    /// Last offset committed (exactly-once: by a transaction).
    committed: i64,
    epoch: u64,
}

/// What a finished record means for its partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settled {
    /// Owned; the offset to store when it advanced.
    Owned(Option<i64>),
    /// Not (or no longer) this instance's: revoked or rewound. Ignore it.
    Stale,
}

impl OffsetTracker {
    /// A record was taken from the partition and is in flight. Returns the
    /// partition's epoch, which the record carries until it is settled.
    pub fn begin(&mut self, topic: &str, partition: i32, offset: i64) -> u64 {
        // Nothing below the first record we took is ours to store.
        let epochs = &mut self.epochs;
        if !self.parts.contains_key(topic) {
            self.parts.insert(topic.to_string(), Map::default());
        }
        let p = self
            .parts
            .get_mut(topic)
            .expect("inserted above")
            .entry(partition)
            .or_insert_with(|| {
                *epochs += 1;
                Partition {
                    pending: VecDeque::new(),
                    open: 0,
                    max_seen: offset - 1,
                    stored: offset - 1,
                    committed: offset - 1,
                    epoch: *epochs,
                }
            });
        match p.pending.back() {
            Some((last, _)) if *last >= offset => {
                // Out of order (never in one epoch of a partition read in order):
                // keep the queue sorted anyway.
                if let Err(i) = p.pending.binary_search_by_key(&offset, |(o, _)| *o) {
                    p.pending.insert(i, (offset, false));
                    p.open += 1;
                }
            }
            _ => {
                p.pending.push_back((offset, false));
                p.open += 1;
            }
        }
        p.max_seen = p.max_seen.max(offset);
        p.epoch
    }

    /// A record is delivered (or dead-lettered). Returns the offset to store (the
    /// last offset below which everything is done) when it advanced.
    pub fn done(&mut self, topic: &str, partition: i32, offset: i64, epoch: u64) -> Settled {
        let Some(p) = self
            .parts
            .get_mut(topic)
            .and_then(|t| t.get_mut(&partition))
        else {
            return Settled::Stale;
        };
        if p.epoch != epoch {
            return Settled::Stale;
        }
        match p.pending.binary_search_by_key(&offset, |(o, _)| *o) {
            Ok(i) if !p.pending[i].1 => {
                p.pending[i].1 = true;
                p.open -= 1;
            }
            _ => return Settled::Stale,
        }
        while p.pending.front().is_some_and(|(_, done)| *done) {
            p.pending.pop_front();
        }
        let safe = match p.pending.front() {
            Some((min, _)) => min - 1,
            None => p.max_seen,
        };
        if safe > p.stored {
            p.stored = safe;
            Settled::Owned(Some(safe))
        } else {
            Settled::Owned(None)
        }
    }

    /// Is this record still this instance's to produce?
    pub fn owns(&self, topic: &str, partition: i32, offset: i64, epoch: u64) -> bool {
        self.parts
            .get(topic)
            .and_then(|t| t.get(&partition))
            .is_some_and(|p| {
                p.epoch == epoch
                    && matches!(
                        p.pending.binary_search_by_key(&offset, |(o, _)| *o),
                        Ok(i) if !p.pending[i].1
                    )
            })
    }

    /// Exactly-once: the next offset to consume per partition that advanced since
    /// the last commit (what `send_offsets_to_transaction` takes).
    pub fn uncommitted(&self) -> Vec<(String, i32, i64)> {
        self.parts
            .iter()
            .flat_map(|(t, ps)| ps.iter().map(move |(n, p)| (t, n, p)))
            .filter(|(_, _, p)| p.stored > p.committed)
            .map(|(t, n, p)| (t.clone(), *n, p.stored + 1))
            .collect()
    }

    /// The transaction holding [`uncommitted`](Self::uncommitted) committed.
    pub fn mark_committed(&mut self) {
        for p in self.parts.values_mut().flat_map(|t| t.values_mut()) {
            p.committed = p.stored;
        }
    }

    /// Exactly-once, after an aborted transaction: every partition goes back to its
    /// last committed offset. Returns where to seek (next offset per partition);
    /// in-flight records become stale.
    pub fn rewind(&mut self) -> Vec<(String, i32, i64)> {
        let mut out = Vec::new();
        for (t, ps) in self.parts.iter_mut() {
            for (n, p) in ps.iter_mut() {
                self.epochs += 1;
                p.epoch = self.epochs;
                p.pending.clear();
                p.open = 0;
                p.stored = p.committed;
                p.max_seen = p.committed;
                out.push((t.clone(), *n, p.committed + 1));
            }
        }
        out
    }

    /// Records still in flight.
    pub fn in_flight(&self) -> usize {
        self.parts
            .values()
            .flat_map(|t| t.values())
            .map(|p| p.open)
            .sum()
    }

    /// Forgets a partition (revoked in a rebalance): late deliveries for it are
    /// ignored, so nothing is stored for a partition this instance no longer owns.
    pub fn forget(&mut self, topic: &str, partition: i32) {
        if let Some(t) = self.parts.get_mut(topic) {
            t.remove(&partition);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advances_only_over_contiguous_completions() {
        let mut t = OffsetTracker::default();
        let mut e = 0;
        for o in 10..15 {
            e = t.begin("a", 0, o);
        }
        let e1 = t.begin("a", 1, 3);
        assert_eq!(
            t.done("a", 0, 12, e),
            Settled::Owned(None),
            "10 and 11 still in flight"
        );
        assert_eq!(t.done("a", 0, 10, e), Settled::Owned(Some(10)));
        assert_eq!(t.done("a", 0, 11, e), Settled::Owned(Some(12)));
        assert_eq!(
            t.done("a", 1, 3, e1),
            Settled::Owned(Some(3)),
            "partitions are independent"
        );
        assert_eq!(t.done("a", 0, 14, e), Settled::Owned(None));
        assert_eq!(t.done("a", 0, 13, e), Settled::Owned(Some(14)));
        assert_eq!(t.in_flight(), 0);
        assert_eq!(
            t.done("a", 0, 13, e),
            Settled::Stale,
            "a repeated ack changes nothing"
        );
        let e2 = t.begin("a", 2, 7);
        assert!(t.owns("a", 2, 7, e2));
        t.forget("a", 2);
        assert!(!t.owns("a", 2, 7, e2));
        assert_eq!(
            t.done("a", 2, 7, e2),
            Settled::Stale,
            "revoked partitions store nothing"
        );
        let again = t.begin("a", 2, 7);
        assert_ne!(again, e2, "taken again after a revoke: a new epoch");
        assert!(!t.owns("a", 2, 7, e2), "the earlier life's record is stale");
        assert!(t.owns("a", 2, 7, again));
    }

    #[test]
    fn transactions_commit_and_rewind() {
        let mut t = OffsetTracker::default();
        let mut e = 0;
        for o in 5..8 {
            e = t.begin("a", 0, o);
        }
        for o in 5..8 {
            t.done("a", 0, o, e);
        }
        assert_eq!(t.uncommitted(), vec![("a".to_string(), 0, 8)]);
        t.mark_committed();
        assert!(t.uncommitted().is_empty());
        t.begin("a", 0, 8);
        t.begin("a", 0, 9);
        t.done("a", 0, 8, e);
        assert_eq!(
            t.rewind(),
            vec![("a".to_string(), 0, 8)],
            "back to the last commit"
        );
        assert!(
            !t.owns("a", 0, 9, e),
            "in-flight records are stale after a rewind"
        );
        assert_eq!(t.in_flight(), 0);
        let e = t.begin("a", 0, 8);
        assert_eq!(t.done("a", 0, 8, e), Settled::Owned(Some(8)));
    }
}
