//! Kafka: the pieces of the stream processor that are independent of the client —
//! Confluent wire framing ([`wire`]), the record headers that carry wrapped DEKs
//! and dead-letter context ([`headers`]), and topic routing ([`route`]). The
//! consume → transform → produce loop (`fieldcrypt run`) builds on these.

pub mod headers;
pub mod route;
pub mod wire;
