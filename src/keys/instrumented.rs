//! A [`Kms`] layer that counts every request by operation and outcome, times it,
//! and keeps the process's KMS-reachable flag (readiness) current. Wraps any
//! provider; the wrapped keys and contexts pass through untouched.

use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use zeroize::Zeroizing;

use super::kms::{DataKey, EncryptionContext, Kms, KmsError, WrappedKey};
use crate::observe::Metrics;

/// Counts and times the calls of the KMS inside.
#[derive(Debug)]
pub struct Instrumented {
    inner: Arc<dyn Kms>,
    metrics: Arc<Metrics>,
}

impl Instrumented {
    pub fn new(inner: Arc<dyn Kms>, metrics: Arc<Metrics>) -> Self {
        Instrumented { inner, metrics }
    }

    fn record<T>(&self, op: &str, started: Instant, r: &Result<T, KmsError>) {
        let outcome = match r {
            Ok(_) => "ok",
            Err(KmsError::Unavailable(_)) => "unavailable",
            Err(KmsError::AccessDenied(_)) => "access_denied",
            Err(KmsError::WrongKek { .. }) => "wrong_kek",
            Err(KmsError::InvalidCiphertext) => "invalid_ciphertext",
            Err(KmsError::Config(_)) => "config",
            Err(KmsError::BindingMismatch) => "binding_mismatch",
        };
        self.metrics
            .kms_requests
            .with_label_values(&[op, outcome])
            .inc();
        self.metrics
            .kms_seconds
            .with_label_values(&[op])
            .observe(started.elapsed().as_secs_f64());
        // Only a failure to reach the KMS makes the process not ready; a refused or
        // corrupt key is the record's problem, not the KMS's.
        match r {
            Err(e) if e.is_retriable() => self.metrics.set_kms_reachable(false),
            _ => self.metrics.set_kms_reachable(true),
        }
    }
}

#[async_trait]
impl Kms for Instrumented {
    fn kek_id(&self) -> &str {
        self.inner.kek_id()
    }

    async fn generate_data_key(
        &self,
        len: usize,
        ctx: &EncryptionContext,
    ) -> Result<DataKey, KmsError> {
        let t = Instant::now();
        let r = self.inner.generate_data_key(len, ctx).await;
        self.record("generate_data_key", t, &r);
        r
    }

    async fn decrypt_data_key(
        &self,
        wrapped: &WrappedKey,
        ctx: &EncryptionContext,
    ) -> Result<Zeroizing<Vec<u8>>, KmsError> {
        let t = Instant::now();
        let r = self.inner.decrypt_data_key(wrapped, ctx).await;
        self.record("decrypt", t, &r);
        r
    }

    async fn encrypt_data_key(
        &self,
        plaintext: &[u8],
        ctx: &EncryptionContext,
    ) -> Result<WrappedKey, KmsError> {
        let t = Instant::now();
        let r = self.inner.encrypt_data_key(plaintext, ctx).await;
        self.record("encrypt", t, &r);
        r
    }

    fn owns(&self, kek: &str) -> bool {
        self.inner.owns(kek)
    }

    async fn re_encrypt(
        &self,
        wrapped: &WrappedKey,
        ctx: &EncryptionContext,
        dest: &str,
    ) -> Result<Option<WrappedKey>, KmsError> {
        let t = Instant::now();
        let r = self.inner.re_encrypt(wrapped, ctx, dest).await;
        if !matches!(r, Ok(None)) {
            self.record("re_encrypt", t, &r);
        }
        r
    }
}
