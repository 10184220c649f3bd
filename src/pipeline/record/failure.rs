//! Why a record's transform stopped: the record's fault (a dead letter with its
//! code) or the infrastructure's ([`Fatal`]: the KMS or registry, nothing wrong
//! with the record). Every step of the transform returns a [`Step`].

use thiserror::Error;

use crate::codes::Code;
use crate::csfle::keys::CsfleKeyError;
use crate::keys::KmsError;
use crate::registry::RegistryError;

/// A failure that is not the record's fault: the record is held through an
/// outage, or the pipeline stops (fail closed) without storing its offset.
#[derive(Debug, Error)]
pub enum Fatal {
    #[error(transparent)]
    Kms(#[from] KmsError),
    #[error(transparent)]
    Registry(RegistryError),
    /// A DEK of Confluent's format could not be had (DEK Registry or KMS).
    #[error(transparent)]
    Csfle(CsfleKeyError),
    /// The current DEK's `fieldcrypt.dek` header cannot be written (its scope or
    /// KEK id does not fit): every record under it would fail alike.
    #[error("the fieldcrypt.dek header of the current DEK cannot be encoded: {}; shorten the route's scope (tenant) or KEK id", .0.reason())]
    DekHeader(crate::kafka::headers::DekHeaderError),
}

impl Fatal {
    /// An outage that waiting can end (the KMS or registry unreachable or
    /// throttling), rather than a refusal or misconfiguration.
    pub fn is_transient(&self) -> bool {
        match self {
            Fatal::Kms(e) => e.is_retriable(),
            Fatal::Registry(e) => matches!(e, RegistryError::Unavailable { .. }),
            Fatal::Csfle(e) => e.is_transient(),
            Fatal::DekHeader(_) => false,
        }
    }

    pub fn code(&self) -> Code {
        match self {
            Fatal::Kms(e) if e.is_retriable() => Code::KmsUnavailable,
            Fatal::Kms(_) => Code::KmsRefused,
            Fatal::Registry(e) => e.code(),
            Fatal::Csfle(CsfleKeyError::Registry(e)) => e.code(),
            Fatal::Csfle(e) if e.is_transient() => Code::KmsUnavailable,
            Fatal::Csfle(_) => Code::KmsRefused,
            Fatal::DekHeader(_) => Code::Setup,
        }
    }
}

/// Why a step of the transform stopped: the record's fault (a dead letter) or
/// the infrastructure's.
#[derive(Debug)]
pub(super) enum Failure {
    Record(Code, String),
    Infra(Fatal),
}

impl Failure {
    /// A record failure's message prefixed with the part it is about (`key`,
    /// `value`); infrastructure failures as they are.
    pub(super) fn about(self, part: &str) -> Self {
        match self {
            Failure::Record(c, m) => Failure::Record(c, format!("{part}: {m}")),
            f => f,
        }
    }
}

impl From<Fatal> for Failure {
    fn from(f: Fatal) -> Self {
        Failure::Infra(f)
    }
}

impl From<KmsError> for Failure {
    fn from(e: KmsError) -> Self {
        Failure::Infra(Fatal::Kms(e))
    }
}

impl From<CsfleKeyError> for Failure {
    fn from(e: CsfleKeyError) -> Self {
        Failure::Infra(Fatal::Csfle(e))
    }
}

impl From<RegistryError> for Failure {
    /// The registry's own answers are about the record; its outages are not.
    fn from(e: RegistryError) -> Self {
        if e.is_infrastructure() {
            Failure::Infra(Fatal::Registry(e))
        } else {
            Failure::Record(e.code(), e.to_string())
        }
    }
}

impl From<Refused> for Failure {
    fn from(r: Refused) -> Self {
        Failure::Record(r.code, r.message)
    }
}

pub(super) type Step<T> = Result<T, Failure>;

/// The record's fault: a dead letter with `code` and `msg`.
pub(super) fn record<T>(code: Code, msg: impl Into<String>) -> Step<T> {
    Err(Failure::Record(code, msg.into()))
}

/// A writer schema refused for good (schema ids never change): the code and
/// message every record of it is dead-lettered with.
#[derive(Debug, Clone)]
pub(super) struct Refused {
    pub code: Code,
    pub message: String,
}

impl Refused {
    pub(super) fn new(code: Code, message: impl Into<String>) -> Self {
        Refused {
            code,
            message: message.into(),
        }
    }

    /// Refused by policy, named by the schema's label.
    pub(super) fn policy(label: &str, m: impl std::fmt::Display) -> Self {
        Refused::new(Code::PolicyError, format!("{label}: {m}"))
    }
}

/// Adds a hint to a raw route's dead letter when the value looks Confluent-framed
/// (magic byte 0 and a schema id): the topic's producers use a Schema Registry and
/// the config has none.
pub(super) fn framing_hint(f: Failure, raw: bool, value: &[u8]) -> Failure {
    match f {
        Failure::Record(code @ (Code::SchemaMismatch | Code::TooDeep), msg)
            if raw && value.len() >= 5 && value[0] == 0 =>
        {
            let id = u32::from_be_bytes([value[1], value[2], value[3], value[4]]);
            Failure::Record(
                code,
                format!(
                    "{msg}; the value starts like a Confluent-framed record (magic byte 0, schema id {id}): \
                     if the topic's producers use a Schema Registry, set [schema_registry] url in the config \
                     instead of the route's value_schema"
                ),
            )
        }
        f => f,
    }
}
