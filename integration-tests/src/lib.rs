#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]
//! Test support: Kubernetes API emulator, process kubelet, test runtime.
