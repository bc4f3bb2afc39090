//! `bufring proxy`: not built yet.

/// Options of `bufring proxy`.
#[derive(clap::Args)]
pub struct Args {}

pub fn run(_args: Args) -> crate::CliResult {
    Err("proxy is not implemented yet".into())
}
