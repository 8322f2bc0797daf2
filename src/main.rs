//! The `orgkey` binary: parse the command line and hand over to [`orgkey::cli`].

use clap::Parser;

fn main() -> std::process::ExitCode {
    // sequoia reports many expected conditions as anyhow errors, and anyhow
    // captures a backtrace for each when RUST_BACKTRACE is set: measured at
    // an eighth of maintenance CPU time. Panics still get their backtraces;
    // library errors get one only if RUST_LIB_BACKTRACE asks for it.
    if std::env::var_os("RUST_LIB_BACKTRACE").is_none() {
        // SAFETY: first statement of main, before any other thread exists.
        unsafe { std::env::set_var("RUST_LIB_BACKTRACE", "0") };
    }
    let cli = orgkey::cli::Cli::parse();
    orgkey::cli::run(cli)
}
