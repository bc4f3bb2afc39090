//! `bufring`: the tools that show, measure and use provided buffer rings on the running kernel.

mod bench;
mod demo;
mod probe;
mod proxy;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "bufring",
    version,
    about = "io_uring provided buffer rings: probe, demo, bench, proxy"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// What the running kernel supports, found by trying each feature.
    Probe(probe::Args),
    /// Replays the incremental-consumption example on the live kernel.
    Demo(demo::Args),
    /// Benchmarks bufring against the physical limit and the alternatives.
    Bench(bench::Args),
    /// A TCP proxy built on provided buffers.
    Proxy(proxy::Args),
}

fn main() {
    let cli = Cli::parse();
    let r = match cli.cmd {
        Cmd::Probe(a) => probe::run(a),
        Cmd::Demo(a) => demo::run(a),
        Cmd::Bench(a) => bench::run(a),
        Cmd::Proxy(a) => proxy::run(a),
    };
    if let Err(e) = r {
        eprintln!("bufring: {e}");
        std::process::exit(1);
    }
}

/// The CLI's error: anything with a message.
pub type CliResult = Result<(), Box<dyn std::error::Error>>;
