//! Thin entry point: everything lives in the library (`job_manager::commands`).
#![forbid(unsafe_code)]

fn main() {
    std::process::exit(job_manager::commands::main());
}
