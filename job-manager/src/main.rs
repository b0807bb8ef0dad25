//! Thin entry point: everything lives in the library (`job_manager::commands`).

fn main() {
    std::process::exit(job_manager::commands::main());
}
