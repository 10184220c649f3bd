//! Exponential backoff with full jitter (AWS Architecture Blog, "Exponential
//! Backoff and Jitter"): the n-th wait is drawn uniformly from zero to
//! `min(max, base × 2^n)`, so many instances recovering from the same outage do
//! not retry in step. The one backoff of the KMS layer, the registry client and
//! the pipeline's outage hold.

use std::time::Duration;

use rand::Rng;

/// Successive waits of one retry sequence.
#[derive(Debug, Clone)]
pub struct Backoff {
    ceiling: Duration,
    max: Duration,
}

impl Backoff {
    /// The first wait is at most `base`; the ceiling doubles per wait up to `max`.
    pub fn new(base: Duration, max: Duration) -> Self {
        Backoff {
            ceiling: base.min(max),
            max,
        }
    }

    /// The next wait: uniform in `[0, ceiling]`, then the ceiling doubles.
    pub fn next_delay(&mut self) -> Duration {
        self.next_with(&mut rand::rng())
    }

    /// As [`next_delay`](Self::next_delay) with a given random source (tests).
    pub fn next_with<R: Rng>(&mut self, rng: &mut R) -> Duration {
        let d = self.ceiling.mul_f64(rng.random::<f64>());
        self.ceiling = (self.ceiling * 2).min(self.max);
        d
    }

    /// The largest wait the next call can return.
    pub fn ceiling(&self) -> Duration {
        self.ceiling
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn waits_are_uniform_below_a_doubling_capped_ceiling() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(700));
        let ceilings: Vec<u128> = (0..5)
            .map(|_| {
                let c = b.ceiling();
                let d = b.next_with(&mut rng);
                assert!(d <= c);
                c.as_millis()
            })
            .collect();
        assert_eq!(ceilings, [100, 200, 400, 700, 700]);
        // Full jitter: waits reach down near zero, not only the top half.
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(1));
        let low = (0..1000)
            .filter(|_| b.next_with(&mut rng) < Duration::from_millis(250))
            .count();
        assert!(
            (180..320).contains(&low),
            "{low} of 1000 in the bottom quarter"
        );
    }
}
