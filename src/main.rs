//! The `engine` command: the engine's CLI over the service topologies.

fn main() -> std::process::ExitCode {
    engine::cli::main(topologies::catalog())
}
