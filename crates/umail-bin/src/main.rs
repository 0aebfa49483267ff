//! `umail`: the reference mail server and its management CLI. Everything
//! is in the `umail_bin` library; this parses the arguments and runs it.
#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    umail_bin::run(umail_bin::Cli::parse())
}
