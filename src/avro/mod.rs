//! Avro byte formats: the binary encoding walked by schema ([`binary`]) and the
//! object container file read and written block by block on raw datum bytes
//! ([`container`]), with apache-avro's codecs.

pub mod binary;
pub mod container;
