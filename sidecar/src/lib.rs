#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]
//! Sidecar library (see README).
