//! Readiness as a value that changes by message: components report what they see
//! (partitions assigned or revoked, the KMS reached or not, consumption paused for
//! an outage, brokers reachable or not, source topics missing) into a `watch` channel, and the `/health/ready` endpoint (or anyone
//! else) reads the latest state or waits for a change. Nothing polls.

use tokio::sync::watch;

/// What readiness depends on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Health {
    /// Partitions currently assigned to this process.
    pub assigned: i64,
    /// False after a KMS call failed for a retriable reason, until one succeeds.
    pub kms_reachable: bool,
    /// Consumption paused while records wait for the KMS or the registry.
    pub paused: bool,
    /// Whether the Kafka brokers answer (`None` until the first sign either way).
    pub brokers: Option<bool>,
    /// `kafka.bootstrap_servers`, for saying which brokers do not answer.
    pub bootstrap: String,
    /// Source topics named by routes that the brokers do not have.
    pub missing_topics: Vec<String>,
}

impl Default for Health {
    fn default() -> Self {
        Health {
            assigned: 0,
            kms_reachable: true,
            paused: false,
            brokers: None,
            bootstrap: String::new(),
            missing_topics: Vec::new(),
        }
    }
}

impl Health {
    /// Ready: partitions assigned, the brokers and the KMS reachable,
    /// consumption not paused.
    pub fn ready(&self) -> bool {
        self.assigned > 0 && self.kms_reachable && !self.paused && self.brokers != Some(false)
    }

    /// Why not ready, for the probe's body (`None` when ready): the most
    /// fundamental cause first.
    pub fn why_not(&self) -> Option<String> {
        if self.ready() {
            None
        } else if self.brokers == Some(false) {
            Some(format!(
                "Kafka brokers unreachable: no broker of kafka.bootstrap_servers = \"{}\" answers",
                self.bootstrap
            ))
        } else if !self.missing_topics.is_empty() && self.assigned <= 0 {
            Some(format!(
                "source topic(s) missing: {} (no partitions assigned)",
                self.missing_topics.join(", ")
            ))
        } else if self.assigned <= 0 {
            Some("no partitions assigned".into())
        } else if self.paused {
            Some("consumption paused, the KMS or Schema Registry is unavailable".into())
        } else {
            Some("KMS unreachable".into())
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
            let before = h.clone();
            f(h);
            *h != before
        });
        self.0.borrow().clone()
    }

    /// The current state.
    pub fn get(&self) -> Health {
        self.0.borrow().clone()
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
        assert_eq!(
            tx.get().why_not().as_deref(),
            Some("no partitions assigned")
        );
        tx.update(|h| h.assigned += 3);
        assert!(rx.has_changed().unwrap());
        assert!(rx.borrow_and_update().ready());
        tx.update(|h| h.kms_reachable = true);
        assert!(!rx.has_changed().unwrap(), "no change, no wake-up");
        tx.update(|h| h.paused = true);
        assert_eq!(
            tx.get().why_not().as_deref(),
            Some("consumption paused, the KMS or Schema Registry is unavailable")
        );
        tx.update(|h| {
            h.paused = false;
            h.kms_reachable = false
        });
        assert_eq!(tx.get().why_not().as_deref(), Some("KMS unreachable"));
    }
}
