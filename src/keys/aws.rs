//! The AWS KMS provider (aws-sdk-kms): GenerateDataKey, Decrypt, Encrypt and
//! ReEncrypt with the encryption context bound to every wrapped key. The KEK is a
//! KMS key named by id, alias or ARN; wrapped keys record the key ARN that KMS
//! returned, and Decrypt names it, so a blob wrapped by another key is refused.
//!
//! Credentials come from the standard provider chain (environment, shared
//! config/credentials files and profiles, web identity, ECS and EC2 instance
//! roles); SSO and `credential_process` are not compiled in. The HTTPS client is
//! hyper + rustls on ring. The SDK's own retries are off: [`super::Resilient`]
//! retries, so attempts are counted and bounded in one place.

use super::provider::SettingError;
use std::collections::HashMap;

use async_trait::async_trait;
use aws_sdk_kms::config::http::HttpResponse;
use aws_sdk_kms::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_kms::primitives::Blob;
use aws_sdk_kms::Client;
use zeroize::Zeroizing;

use super::kms::{DataKey, EncryptionContext, Kms, KmsError, WrappedKey};

/// `[kms]` with `provider = "aws"`.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AwsConfig {
    /// The default KEK: key id, alias (`alias/NAME`) or ARN.
    pub key_id: Option<String>,
    /// AWS region; default from the AWS configuration chain (`AWS_REGION`, profile).
    pub region: Option<String>,
    /// AWS endpoint override (LocalStack, moto, a VPC endpoint).
    pub endpoint_url: Option<String>,
}

impl AwsConfig {
    /// Where to reach AWS KMS.
    pub fn settings(&self) -> AwsSettings {
        AwsSettings {
            region: self.region.clone(),
            endpoint_url: self.endpoint_url.clone(),
        }
    }

    pub(super) fn kek_ref(&self) -> Result<super::provider::KekRef, SettingError> {
        match self.key_id.as_deref().filter(|k| !k.is_empty()) {
            Some(k) => Ok(super::provider::KekRef {
                provider: PROVIDER,
                name: k.strip_prefix("aws:").unwrap_or(k).to_string(),
            }),
            None => Err(SettingError {
                key: "key_id",
                msg: "provider \"aws\" needs the KMS key that wraps data keys: a key id, alias/NAME or ARN",
            }),
        }
    }

    pub(super) fn validate(&self) -> Result<(), SettingError> {
        match &self.endpoint_url {
            Some(u) if !(u.starts_with("http://") || u.starts_with("https://")) => {
                Err(SettingError {
                    key: "endpoint_url",
                    msg: "must be an http:// or https:// URL",
                })
            }
            _ => Ok(()),
        }
    }
}

/// The AWS provider's entry in the driver table: KMS keys by id, alias or ARN
/// (`aws:KEY`; wrapped keys name the key's ARN), and Confluent's `aws-kms` (a key
/// ARN, no encryption context). One SDK client per [`super::driver::Clients`],
/// reaching the `[kms]` table's region and endpoint when the provider is AWS, the
/// AWS configuration chain's otherwise.
pub struct AwsDriver;

/// The AWS provider.
pub const PROVIDER: super::driver::Provider = super::driver::Provider::new(&AwsDriver);

impl AwsDriver {
    async fn client(&self, clients: &super::driver::Clients) -> Result<Client, KmsError> {
        let settings = match &clients.config().provider {
            super::provider::ProviderConfig::Aws(c) => c.settings(),
            _ => AwsSettings::default(),
        };
        let c = clients
            .get_or_build("aws", || async move { client(&settings).await })
            .await?;
        Ok((*c).clone())
    }
}

#[async_trait]
impl super::driver::KmsDriver for AwsDriver {
    fn name(&self) -> &'static str {
        "aws"
    }

    fn confluent_type(&self) -> Option<&'static str> {
        Some("aws-kms")
    }

    fn claims_wrapped(&self, kek_id: &str) -> bool {
        is_aws_key(kek_id)
    }

    fn chatty_log_targets(&self) -> &'static [&'static str] {
        // The SDK dumps requests and responses (key ids, ARNs, wrapped keys) at
        // trace, and its HTTP stack logs connections at debug.
        &[
            "aws_smithy_runtime",
            "aws_smithy_runtime_api",
            "aws_smithy_http_client",
            "aws_sdk_kms",
            "aws_runtime",
            "aws_config",
            "hyper",
            "hyper_util",
            "rustls",
        ]
    }

    fn check_confluent_key_id(&self, kms_key_id: &str) -> Result<(), super::driver::KeyIdRefused> {
        if is_aws_key(kms_key_id) {
            Ok(())
        } else {
            Err(super::driver::KeyIdRefused(
                "aws-kms needs the key's full ARN (Confluent's clients find the region in it)",
            ))
        }
    }

    async fn open(
        &self,
        name: &str,
        clients: &super::driver::Clients,
    ) -> Result<std::sync::Arc<dyn Kms>, KmsError> {
        let c = self.client(clients).await?;
        Ok(std::sync::Arc::new(AwsKms::new(c, name).resolve().await?))
    }

    async fn open_confluent(
        &self,
        kms_key_id: &str,
        clients: &super::driver::Clients,
    ) -> Result<std::sync::Arc<dyn Kms>, KmsError> {
        let c = self.client(clients).await?;
        Ok(std::sync::Arc::new(AwsKms::new(c, kms_key_id)))
    }
}

/// Where and how to reach AWS KMS.
#[derive(Debug, Clone, Default)]
pub struct AwsSettings {
    /// Overrides the region of the provider chain (`AWS_REGION`, profile).
    pub region: Option<String>,
    /// A non-AWS endpoint (LocalStack, moto) or a VPC endpoint.
    pub endpoint_url: Option<String>,
}

/// Builds a KMS client from the standard AWS configuration chain.
pub async fn client(settings: &AwsSettings) -> Result<Client, KmsError> {
    use aws_smithy_http_client::{tls, Builder};
    let http = Builder::new()
        .tls_provider(tls::Provider::Rustls(
            tls::rustls_provider::CryptoMode::Ring,
        ))
        .build_https();
    let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .http_client(http)
        .retry_config(aws_config::retry::RetryConfig::disabled());
    if let Some(r) = &settings.region {
        loader = loader.region(aws_config::Region::new(r.clone()));
    }
    if let Some(u) = &settings.endpoint_url {
        loader = loader.endpoint_url(u.clone());
    }
    let conf = loader.load().await;
    if conf.region().is_none() {
        return Err(KmsError::Config(
            "kms.region is not set and the AWS configuration chain (AWS_REGION, profile) names no region"
                .into(),
        ));
    }
    Ok(Client::new(&conf))
}

/// One AWS KMS key as a KEK.
#[derive(Clone)]
pub struct AwsKms {
    client: Client,
    key_id: String,
    /// The key's ARN, once known (given as an ARN, or resolved by
    /// [`AwsKms::resolve`]): only wrapped keys naming it are unwrapped here.
    arn: Option<String>,
}

impl std::fmt::Debug for AwsKms {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AwsKms({})", self.key_id)
    }
}

impl AwsKms {
    /// `key_id`: key id, alias (`alias/name`) or ARN. Until [`AwsKms::resolve`]
    /// has run, a key given by alias owns no wrapped key; one given by id owns
    /// the ARNs that end in it.
    pub fn new(client: Client, key_id: impl Into<String>) -> Self {
        let key_id = key_id.into();
        let arn = is_key_arn(&key_id).then(|| key_id.clone());
        AwsKms {
            client,
            key_id,
            arn,
        }
    }

    /// Learns the key's ARN (DescribeKey) when it was given by alias or id, so
    /// that a wrapped key is unwrapped only by the key it names, and never by a
    /// key the config does not name (a DEK header naming someone else's key is
    /// refused before any call). A key given by ARN needs no call.
    pub async fn resolve(mut self) -> Result<Self, KmsError> {
        if self.arn.is_some() {
            return Ok(self);
        }
        let out = self
            .client
            .describe_key()
            .key_id(&self.key_id)
            .send()
            .await
            .map_err(|e| match classify("DescribeKey", &self.key_id, e) {
                KmsError::AccessDenied(m) => KmsError::Config(format!(
                    "{m}: fieldcrypt needs kms:DescribeKey to learn which key {} is, or give the key's ARN instead",
                    self.key_id
                )),
                e => e,
            })?;
        let arn = out.key_metadata.and_then(|m| m.arn).ok_or_else(|| {
            KmsError::Config(format!("DescribeKey on {} named no key ARN", self.key_id))
        })?;
        self.arn = Some(arn);
        Ok(self)
    }
}

/// A key's ARN (`arn:aws…:kms:REGION:ACCOUNT:key/ID`), not an alias's.
fn is_key_arn(s: &str) -> bool {
    is_aws_key(s)
        && s.rsplit_once(':')
            .is_some_and(|(_, r)| r.starts_with("key/"))
}

/// Did AWS KMS record `kek` in a wrapped key? AWS names the key that wrapped a data
/// key by its ARN (`arn:aws:kms:…`, `arn:aws-cn:kms:…`, `arn:aws-us-gov:kms:…`), so
/// any other id (`local:…`, another provider's) is not AWS's to unwrap.
pub fn is_aws_key(kek: &str) -> bool {
    kek.strip_prefix("arn:aws")
        .and_then(|rest| rest.split_once(':'))
        .is_some_and(|(partition, rest)| {
            (partition.is_empty() || partition.starts_with('-')) && rest.starts_with("kms:")
        })
}

fn context(ctx: &EncryptionContext) -> Option<HashMap<String, String>> {
    Some(ctx.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
}

/// Classifies an SDK failure: only what waiting can fix is `Unavailable` (the
/// pipeline then pauses); refusals and misconfiguration are not retried.
fn classify<E: ProvideErrorMetadata + std::error::Error + 'static>(
    op: &str,
    key: &str,
    e: SdkError<E, HttpResponse>,
) -> KmsError {
    let detail = || {
        format!(
            "{op} on {key}: {}",
            aws_sdk_kms::error::DisplayErrorContext(&e)
        )
    };
    match &e {
        SdkError::TimeoutError(_) | SdkError::ResponseError(_) => {
            return KmsError::Unavailable(detail())
        }
        // Network trouble waits; a request that could not be made (no credentials,
        // a bad endpoint) is configuration, and waiting cannot fix it.
        SdkError::DispatchFailure(d) => {
            return if d.is_io() || d.is_timeout() || d.as_other().is_some() {
                KmsError::Unavailable(detail())
            } else {
                KmsError::Config(detail())
            };
        }
        SdkError::ConstructionFailure(_) => return KmsError::Config(detail()),
        _ => {}
    }
    let status = e.raw_response().map(|r| r.status().as_u16());
    let code = e.code().unwrap_or("Unknown").to_string();
    let msg = format!("{op} on {key}: {code}: {}", e.message().unwrap_or(""));
    match code.as_str() {
        "ThrottlingException"
        | "LimitExceededException"
        | "KMSInternalException"
        | "KeyUnavailableException"
        | "DependencyTimeoutException"
        | "ServiceUnavailableException"
        | "InternalFailure"
        | "RequestTimeout"
        | "RequestTimeoutException"
        // Credentials the chain will refresh (or an operator will fix): the whole
        // process is affected, not one key, so wait rather than dead-letter.
        | "ExpiredTokenException"
        | "UnrecognizedClientException"
        | "InvalidClientTokenId" => KmsError::Unavailable(msg),
        "InvalidCiphertextException" | "IncorrectKeyException" => KmsError::InvalidCiphertext,
        "AccessDeniedException"
        | "DisabledException"
        | "KMSInvalidStateException"
        | "InvalidGrantTokenException" => KmsError::AccessDenied(msg),
        // An answer without a KMS error code: a gateway or proxy failing (5xx) or
        // throttling (429) is an outage; anything else is not ours to retry.
        _ if status.is_some_and(|s| s >= 500 || s == 429) => {
            KmsError::Unavailable(format!("{msg} (HTTP {})", status.unwrap_or(0)))
        }
        _ => KmsError::Config(msg),
    }
}

#[async_trait]
impl Kms for AwsKms {
    fn kek_id(&self) -> &str {
        &self.key_id
    }

    /// The wrapped keys of this key only: its ARN, or, when it was given by key
    /// id and not resolved, an ARN of that id. A wrapped key naming any other
    /// key (another account's, one the config does not name) is not ours: AWS
    /// would let IAM decide, and a forged DEK header could then make fieldcrypt
    /// call a key of the forger's choosing.
    fn owns(&self, kek: &str) -> bool {
        if !is_aws_key(kek) {
            return false;
        }
        if kek == self.key_id {
            return true;
        }
        match &self.arn {
            Some(a) => a == kek,
            None if !self.key_id.starts_with("alias/") && !self.key_id.contains(':') => {
                kek.ends_with(&format!(":key/{}", self.key_id))
            }
            None => false,
        }
    }

    async fn generate_data_key(
        &self,
        len: usize,
        ctx: &EncryptionContext,
    ) -> Result<DataKey, KmsError> {
        let mut out = self
            .client
            .generate_data_key()
            .key_id(&self.key_id)
            .number_of_bytes(len as i32)
            .set_encryption_context(context(ctx))
            .send()
            .await
            .map_err(|e| classify("GenerateDataKey", &self.key_id, e))?;
        let plaintext = Zeroizing::new(
            out.plaintext
                .take()
                .map(Blob::into_inner)
                .unwrap_or_default(),
        );
        let blob = out.ciphertext_blob.take().map(Blob::into_inner);
        match (blob, out.key_id) {
            (Some(blob), Some(kek)) if plaintext.len() == len => Ok(DataKey {
                plaintext,
                wrapped: WrappedKey { kek, blob },
            }),
            _ => Err(KmsError::Config(format!(
                "GenerateDataKey on {} returned an incomplete answer",
                self.key_id
            ))),
        }
    }

    async fn decrypt_data_key(
        &self,
        wrapped: &WrappedKey,
        ctx: &EncryptionContext,
    ) -> Result<Zeroizing<Vec<u8>>, KmsError> {
        if !self.owns(&wrapped.kek) {
            return Err(KmsError::WrongKek {
                expected: self.arn.clone().unwrap_or_else(|| self.key_id.clone()),
                found: wrapped.kek.clone(),
            });
        }
        let mut out = self
            .client
            .decrypt()
            .key_id(&wrapped.kek)
            .ciphertext_blob(Blob::new(wrapped.blob.clone()))
            .set_encryption_context(context(ctx))
            .send()
            .await
            .map_err(|e| classify("Decrypt", &wrapped.kek, e))?;
        out.plaintext
            .take()
            .map(|b| Zeroizing::new(b.into_inner()))
            .ok_or_else(|| KmsError::Config(format!("Decrypt on {} returned no key", wrapped.kek)))
    }

    async fn encrypt_data_key(
        &self,
        plaintext: &[u8],
        ctx: &EncryptionContext,
    ) -> Result<WrappedKey, KmsError> {
        let out = self
            .client
            .encrypt()
            .key_id(&self.key_id)
            .plaintext(Blob::new(plaintext.to_vec()))
            .set_encryption_context(context(ctx))
            .send()
            .await
            .map_err(|e| classify("Encrypt", &self.key_id, e))?;
        match (out.ciphertext_blob, out.key_id) {
            (Some(b), Some(kek)) => Ok(WrappedKey {
                kek,
                blob: b.into_inner(),
            }),
            _ => Err(KmsError::Config(format!(
                "Encrypt on {} returned an incomplete answer",
                self.key_id
            ))),
        }
    }

    async fn re_encrypt(
        &self,
        wrapped: &WrappedKey,
        ctx: &EncryptionContext,
        dest: &str,
    ) -> Result<Option<WrappedKey>, KmsError> {
        // `dest` is a key reference (id, alias or ARN) when it is AWS's; another
        // provider's id (`local:…`) means the caller unwraps and wraps instead.
        let other_provider = matches!(
            super::provider::Provider::of_wrapped(dest),
            Some(p) if p != PROVIDER
        );
        if !is_aws_key(&wrapped.kek) || other_provider || dest.is_empty() {
            return Ok(None);
        }
        let out = self
            .client
            .re_encrypt()
            .ciphertext_blob(Blob::new(wrapped.blob.clone()))
            .source_key_id(&wrapped.kek)
            .set_source_encryption_context(context(ctx))
            .destination_key_id(dest)
            .set_destination_encryption_context(context(ctx))
            .send()
            .await
            .map_err(|e| classify("ReEncrypt", &wrapped.kek, e))?;
        match (out.ciphertext_blob, out.key_id) {
            (Some(b), Some(kek)) => Ok(Some(WrappedKey {
                kek,
                blob: b.into_inner(),
            })),
            _ => Err(KmsError::Config(format!(
                "ReEncrypt to {dest} returned an incomplete answer"
            ))),
        }
    }
}
