//! The `engine` command: the engine's CLI over the service topologies.

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod demo;

fn main() -> std::process::ExitCode {
    engine::cli::main_with(topologies::catalog(), vec![demo::extension()])
}
