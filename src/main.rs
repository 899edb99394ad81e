//! The `runyard` binary: parse the command line, set up logging, run, map errors to exit codes.
//!
//! The allocator is jemalloc with its background purging thread: memory freed after a
//! burst (a thousand SSE clients that leave, a large replay) goes back to the system
//! within seconds, where glibc's malloc would keep it for reuse.

#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> std::process::ExitCode {
    runyard::cli::main()
}
