//! The `fieldcrypt` binary: see `cli` for the commands.

#![forbid(unsafe_code)]

mod cli;

fn main() -> std::process::ExitCode {
    cli::main()
}
