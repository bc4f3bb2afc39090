//! `bufring bench`: not built yet.

/// Options of `bufring bench`.
#[derive(clap::Args)]
pub struct Args {}

pub fn run(_args: Args) -> crate::CliResult {
    Err("bench is not implemented yet".into())
}
