//! Key management: the KMS interface, its providers (local KEK file, AWS KMS; one
//! driver each in the table of [`driver`], configured in [`provider`]), the layers around it (instrumented, resilient) and the key ring of KEKs, the
//! keyset file of long-lived wrapped keys (deterministic and blind-index), and the
//! data-key caches for randomized encryption (encrypt side) and unwrapping (decrypt
//! side). Plaintext key bytes never leave this module except into the cipher
//! constructors of [`crate::crypto`], and are zeroized after use.

pub mod aws;
pub mod clock;
pub mod dek;
pub mod driver;
pub mod instrumented;
pub mod keyset;
pub mod kms;
pub mod local;
pub mod provider;
pub mod resilient;
pub mod ring;

pub use clock::{Clock, ManualClock, SystemClock};
pub use dek::{Dek, DekCache, DekManager, DekSettings, DekStats, WrappedDek};
pub use instrumented::Instrumented;
pub use keyset::{KeyMaterial, Keyset, Purpose};
pub use kms::{DataKey, EncryptionContext, Kms, KmsError, WrappedKey};
pub use local::LocalKms;
pub use provider::{KekRef, KmsConfig, Provider, ProviderConfig};
pub use resilient::{Resilient, RetryPolicy};
pub use ring::KeyRing;

/// Formats a time as RFC 3339 UTC with second precision (no chrono dependency).
pub fn rfc3339(t: std::time::SystemTime) -> String {
    let secs = t
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn rfc3339_formats_known_instants() {
        use std::time::{Duration, UNIX_EPOCH};
        assert_eq!(super::rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        assert_eq!(
            super::rfc3339(UNIX_EPOCH + Duration::from_secs(1_795_824_000)),
            "2026-11-28T00:00:00Z"
        );
    }
}
