#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]
//! Job manager library (see README).
