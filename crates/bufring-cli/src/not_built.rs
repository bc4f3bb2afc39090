//! Subcommands left out of this build: they parse any arguments and fail with a message that
//! names the cargo feature that builds them, instead of clap's "unrecognized subcommand".

use std::fmt;

/// Whatever was passed to a subcommand this build does not have.
#[derive(clap::Args)]
pub struct Args {
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, hide = true)]
    _rest: Vec<String>,
}

/// A subcommand needs a cargo feature this binary was built without.
#[derive(Debug)]
pub struct FeatureDisabled {
    /// The subcommand, as typed.
    pub command: &'static str,
    /// The feature of `bufring-cli` that builds it.
    pub feature: &'static str,
}

impl fmt::Display for FeatureDisabled {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Self { command, feature } = self;
        write!(
            f,
            "`{command}` is not in this build: it needs the `{feature}` feature \
             (cargo run --release --features {feature} -- {command} ..., \
             or --features full for every subcommand)"
        )
    }
}

impl std::error::Error for FeatureDisabled {}

/// Fails with [`FeatureDisabled`].
pub fn run(_: Args, command: &'static str, feature: &'static str) -> crate::CliResult {
    Err(FeatureDisabled { command, feature }.into())
}
