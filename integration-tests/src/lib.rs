//! Test support: Kubernetes API emulator (`emulator`), process kubelet, test runtime.

pub mod bins;
pub mod emulator;
pub mod kubelet;
