//! Thin entry point: everything lives in the library (`job_manager::app`).
#![forbid(unsafe_code)]

fn main() {
    std::process::exit(job_manager::app::main());
}
