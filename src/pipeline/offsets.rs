//! At-least-once offset bookkeeping: records of a partition finish out of order
//! (deliveries complete concurrently), but the offset stored for commit may only
//! advance past a record once it and every earlier record of the partition are
//! delivered.

use std::collections::{BTreeSet, HashMap};

/// Per-partition in-flight offsets.
#[derive(Debug, Default)]
pub struct OffsetTracker {
    parts: HashMap<(String, i32), Partition>,
}

#[derive(Debug, Default)]
struct Partition {
    pending: BTreeSet<i64>,
    max_seen: i64,
    stored: i64,
}

impl OffsetTracker {
    /// A record was taken from the partition and is in flight.
    pub fn begin(&mut self, topic: &str, partition: i32, offset: i64) {
        // Nothing below the first record we took is ours to store.
        let p = self
            .parts
            .entry((topic.to_string(), partition))
            .or_insert(Partition {
                pending: BTreeSet::new(),
                max_seen: offset - 1,
                stored: offset - 1,
            });
        p.pending.insert(offset);
        p.max_seen = p.max_seen.max(offset);
    }

    /// A record is delivered (or dead-lettered). Returns the offset to store (the
    /// last offset below which everything is done) when it advanced.
    pub fn done(&mut self, topic: &str, partition: i32, offset: i64) -> Option<i64> {
        let p = self.parts.get_mut(&(topic.to_string(), partition))?;
        if !p.pending.remove(&offset) {
            return None;
        }
        let safe = match p.pending.first() {
            Some(min) => min - 1,
            None => p.max_seen,
        };
        if safe > p.stored {
            p.stored = safe;
            Some(safe)
        } else {
            None
        }
    }

    /// Records still in flight.
    pub fn in_flight(&self) -> usize {
        self.parts.values().map(|p| p.pending.len()).sum()
    }

    /// Forgets a partition (revoked in a rebalance): late deliveries for it are
    /// ignored, so nothing is stored for a partition this instance no longer owns.
    pub fn forget(&mut self, topic: &str, partition: i32) {
        self.parts.remove(&(topic.to_string(), partition));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advances_only_over_contiguous_completions() {
        let mut t = OffsetTracker::default();
        for o in 10..15 {
            t.begin("a", 0, o);
        }
        t.begin("a", 1, 3);
        assert_eq!(t.done("a", 0, 12), None, "10 and 11 still in flight");
        assert_eq!(t.done("a", 0, 10), Some(10));
        assert_eq!(t.done("a", 0, 11), Some(12));
        assert_eq!(t.done("a", 1, 3), Some(3), "partitions are independent");
        assert_eq!(t.done("a", 0, 14), None);
        assert_eq!(t.done("a", 0, 13), Some(14));
        assert_eq!(t.in_flight(), 0);
        assert_eq!(t.done("a", 0, 13), None, "a repeated ack changes nothing");
        t.begin("a", 2, 7);
        t.forget("a", 2);
        assert_eq!(t.done("a", 2, 7), None, "revoked partitions store nothing");
    }
}
