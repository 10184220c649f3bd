//! A [`Kms`] layer that bounds each call with a timeout and retries the failures
//! worth retrying (the KMS unreachable, throttling, a timeout) with exponential
//! backoff and full jitter. Refusals — access denied, a wrong KEK, a corrupt or
//! out-of-context wrapped key, misconfiguration — fail at once: retrying cannot
//! change them.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use zeroize::Zeroizing;

use super::kms::{DataKey, EncryptionContext, Kms, KmsError, WrappedKey};

/// Timeout and retry policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Per attempt.
    pub timeout: Duration,
    /// Attempts after the first.
    pub retries: u32,
    /// First backoff; doubled per retry up to `max_backoff`.
    pub base_backoff: Duration,
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            timeout: Duration::from_secs(5),
            retries: 3,
            base_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
        }
    }
}

/// Retries the KMS inside by [`RetryPolicy`].
#[derive(Debug)]
pub struct Resilient {
    inner: Arc<dyn Kms>,
    policy: RetryPolicy,
}

impl Resilient {
    pub fn new(inner: Arc<dyn Kms>, policy: RetryPolicy) -> Self {
        Resilient { inner, policy }
    }

    async fn call<T, F, Fut>(&self, op: &str, mut f: F) -> Result<T, KmsError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, KmsError>>,
    {
        let mut backoff =
            crate::backoff::Backoff::new(self.policy.base_backoff, self.policy.max_backoff);
        let mut attempt = 0;
        loop {
            let r = match tokio::time::timeout(self.policy.timeout, f()).await {
                Ok(r) => r,
                Err(_) => Err(KmsError::Unavailable(format!(
                    "{op} timed out after {:?}",
                    self.policy.timeout
                ))),
            };
            match r {
                Err(e) if e.is_retriable() && attempt < self.policy.retries => {
                    attempt += 1;
                    tracing::warn!(operation = op, error = %e, attempt, "KMS call failed; retrying");
                    tokio::time::sleep(backoff.next_delay()).await;
                }
                r => return r,
            }
        }
    }
}

#[async_trait]
impl Kms for Resilient {
    fn kek_id(&self) -> &str {
        self.inner.kek_id()
    }

    async fn generate_data_key(
        &self,
        len: usize,
        ctx: &EncryptionContext,
    ) -> Result<DataKey, KmsError> {
        self.call("generate_data_key", || {
            self.inner.generate_data_key(len, ctx)
        })
        .await
    }

    async fn decrypt_data_key(
        &self,
        wrapped: &WrappedKey,
        ctx: &EncryptionContext,
    ) -> Result<Zeroizing<Vec<u8>>, KmsError> {
        self.call("decrypt", || self.inner.decrypt_data_key(wrapped, ctx))
            .await
    }

    async fn encrypt_data_key(
        &self,
        plaintext: &[u8],
        ctx: &EncryptionContext,
    ) -> Result<WrappedKey, KmsError> {
        self.call("encrypt", || self.inner.encrypt_data_key(plaintext, ctx))
            .await
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
        self.call("re_encrypt", || self.inner.re_encrypt(wrapped, ctx, dest))
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::LocalKms;
    use std::sync::atomic::{AtomicU32, Ordering};

    /// Fails the first `fail` calls with `err`, then answers as a local KMS;
    /// `hang` makes failing calls never return instead.
    #[derive(Debug)]
    struct Flaky {
        inner: LocalKms,
        fail: u32,
        err: KmsError,
        hang: bool,
        calls: AtomicU32,
    }

    #[async_trait]
    impl Kms for Flaky {
        fn kek_id(&self) -> &str {
            self.inner.kek_id()
        }
        async fn generate_data_key(
            &self,
            len: usize,
            ctx: &EncryptionContext,
        ) -> Result<DataKey, KmsError> {
            if self.calls.fetch_add(1, Ordering::SeqCst) < self.fail {
                if self.hang {
                    std::future::pending::<()>().await;
                }
                return Err(self.err.clone());
            }
            self.inner.generate_data_key(len, ctx).await
        }
        async fn decrypt_data_key(
            &self,
            wrapped: &WrappedKey,
            ctx: &EncryptionContext,
        ) -> Result<Zeroizing<Vec<u8>>, KmsError> {
            self.inner.decrypt_data_key(wrapped, ctx).await
        }
        async fn encrypt_data_key(
            &self,
            plaintext: &[u8],
            ctx: &EncryptionContext,
        ) -> Result<WrappedKey, KmsError> {
            self.inner.encrypt_data_key(plaintext, ctx).await
        }
    }

    fn layered(fail: u32, err: KmsError, hang: bool) -> (Arc<Flaky>, Resilient) {
        let f = Arc::new(Flaky {
            inner: LocalKms::from_bytes(&[7; 32]).unwrap(),
            fail,
            err,
            hang,
            calls: AtomicU32::new(0),
        });
        let policy = RetryPolicy {
            timeout: Duration::from_millis(50),
            retries: 3,
            base_backoff: Duration::from_millis(1),
            max_backoff: Duration::from_millis(4),
        };
        (f.clone(), Resilient::new(f, policy))
    }

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    #[test]
    fn retries_outages_then_succeeds() {
        let (f, k) = layered(3, KmsError::Unavailable("down".into()), false);
        let ctx = EncryptionContext::new();
        assert!(rt().block_on(k.generate_data_key(32, &ctx)).is_ok());
        assert_eq!(
            f.calls.load(Ordering::SeqCst),
            4,
            "three retries, then success"
        );
    }

    #[test]
    fn gives_up_after_the_budget() {
        let (f, k) = layered(10, KmsError::Unavailable("down".into()), false);
        let ctx = EncryptionContext::new();
        let e = rt().block_on(k.generate_data_key(32, &ctx)).err().unwrap();
        assert!(e.is_retriable());
        assert_eq!(f.calls.load(Ordering::SeqCst), 4);
    }

    #[test]
    fn refusals_fail_fast() {
        let (f, k) = layered(10, KmsError::AccessDenied("no".into()), false);
        let ctx = EncryptionContext::new();
        let e = rt().block_on(k.generate_data_key(32, &ctx)).err().unwrap();
        assert!(matches!(e, KmsError::AccessDenied(_)));
        assert_eq!(f.calls.load(Ordering::SeqCst), 1, "not retried");
    }

    #[test]
    fn a_hung_call_times_out_and_is_retried() {
        let (f, k) = layered(2, KmsError::Unavailable("unused".into()), true);
        let ctx = EncryptionContext::new();
        assert!(rt().block_on(k.generate_data_key(32, &ctx)).is_ok());
        assert_eq!(f.calls.load(Ordering::SeqCst), 3);
    }
}
