//! The local executor: each job runs as a local process beside a real sidecar process,
//! with the same hand-off and result path as a pod.
pub mod executor;
mod process;
mod state_dir;

pub use executor::*;
pub use process::read_tail;
