//! Readiness as a value that changes by message: components report what they see
//! (partitions assigned or revoked, the KMS reached or not, consumption paused for
//! an outage) into a `watch` channel, and the `/health/ready` endpoint (or anyone
//! else) reads the latest state or waits for a change. Nothing polls.

use tokio::sync::watch;

/// What readiness depends on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Health {
    /// Partitions currently assigned to this process.
    pub assigned: i64,
    /// False after a KMS call failed for a retriable reason, until one succeeds.
    pub kms_reachable: bool,
    /// Consumption paused while records wait for the KMS or the registry.
    pub paused: bool,
}

impl Default for Health {
    fn default() -> Self {
        Health {
            assigned: 0,
            kms_reachable: true,
            paused: false,
        }
    }
}

impl Health {
    /// Ready: partitions assigned, the KMS reachable, consumption not paused.
    pub fn ready(&self) -> bool {
        self.assigned > 0 && self.kms_reachable && !self.paused
    }

    /// Why not ready, for the probe's body (`None` when ready).
    pub fn why_not(&self) -> Option<&'static str> {
        if self.ready() {
            None
        } else if self.assigned <= 0 {
            Some("no partitions assigned")
        } else if self.paused {
            Some("consumption paused, the KMS or Schema Registry is unavailable")
        } else {
            Some("KMS unreachable")
        }
    }
}

/// The sending side, shared by the components that report.
#[derive(Debug)]
pub struct HealthTx(watch::Sender<Health>);

impl Default for HealthTx {
    fn default() -> Self {
        HealthTx(watch::Sender::new(Health::default()))
    }
}

impl HealthTx {
    /// Applies a change; receivers see the new state (and are woken if it differs).
    pub fn update(&self, f: impl FnOnce(&mut Health)) -> Health {
        self.0.send_if_modified(|h| {
            let before = *h;
            f(h);
            *h != before
        });
        *self.0.borrow()
    }

    /// The current state.
    pub fn get(&self) -> Health {
        *self.0.borrow()
    }

    /// A receiver that can wait for changes.
    pub fn subscribe(&self) -> watch::Receiver<Health> {
        self.0.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_follows_the_reports_and_wakes_receivers() {
        let tx = HealthTx::default();
        let mut rx = tx.subscribe();
        assert_eq!(tx.get().why_not(), Some("no partitions assigned"));
        tx.update(|h| h.assigned += 3);
        assert!(rx.has_changed().unwrap());
        assert!(rx.borrow_and_update().ready());
        tx.update(|h| h.kms_reachable = true);
        assert!(!rx.has_changed().unwrap(), "no change, no wake-up");
        tx.update(|h| h.paused = true);
        assert_eq!(
            tx.get().why_not(),
            Some("consumption paused, the KMS or Schema Registry is unavailable")
        );
        tx.update(|h| {
            h.paused = false;
            h.kms_reachable = false
        });
        assert_eq!(tx.get().why_not(), Some("KMS unreachable"));
    }
}
