//! The integration tests' harness lives in its own crate (`harness/`), shared with
//! `cargo xtask`; `mod common;` keeps the tests' paths short.
#![allow(unused_imports)]

pub use fieldcrypt_harness::*;
