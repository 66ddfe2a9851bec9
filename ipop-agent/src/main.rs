//! `ipop-agent`: the command line lives in the library (`ipop_agent::cli`), where it is tested.

fn main() -> std::process::ExitCode {
    ipop_agent::cli::main()
}
