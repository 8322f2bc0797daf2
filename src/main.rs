//! The `orgkey` binary: parse the command line and hand over to [`orgkey::cli`].

use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = orgkey::cli::Cli::parse();
    orgkey::cli::run(cli)
}
