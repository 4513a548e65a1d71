//! The `engine` command: the engine's CLI over the service topologies.

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    engine::cli::main(topologies::catalog())
}
