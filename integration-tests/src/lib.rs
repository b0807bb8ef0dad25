//! Test support: Kubernetes API emulator (`emulator`), process kubelet, test runtime.
#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]

pub mod bins;
pub mod emulator;
pub mod kubelet;
