//! `bufring`: the tools that show, measure and use provided buffer rings on the running kernel.

#[cfg(feature = "bench")]
mod bench;
mod demo;
#[cfg(not(all(feature = "bench", feature = "proxy-tokio")))]
mod not_built;
mod probe;
mod proxy;
#[cfg(feature = "proxy-tokio")]
mod proxy_tokio;

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
    #[cfg(feature = "bench")]
    Bench(bench::Args),
    /// Benchmarks bufring against the alternatives (not built: needs the `bench` feature).
    #[cfg(not(feature = "bench"))]
    Bench(not_built::Args),
    /// A TCP proxy built on provided buffers.
    Proxy(proxy::Args),
    /// The tokio copy_bidirectional proxy the proxy benchmark compares against.
    #[cfg(feature = "proxy-tokio")]
    #[command(hide = true)]
    ProxyTokio(proxy_tokio::Args),
    /// The tokio baseline proxy (not built: needs the `proxy-tokio` feature).
    #[cfg(not(feature = "proxy-tokio"))]
    #[command(hide = true)]
    ProxyTokio(not_built::Args),
}

fn main() {
    let cli = Cli::parse();
    let r = match cli.cmd {
        Cmd::Probe(a) => probe::run(a),
        Cmd::Demo(a) => demo::run(a),
        #[cfg(feature = "bench")]
        Cmd::Bench(a) => bench::run(a),
        #[cfg(not(feature = "bench"))]
        Cmd::Bench(a) => not_built::run(a, "bench", "bench"),
        Cmd::Proxy(a) => proxy::run(a),
        #[cfg(feature = "proxy-tokio")]
        Cmd::ProxyTokio(a) => proxy_tokio::run(a),
        #[cfg(not(feature = "proxy-tokio"))]
        Cmd::ProxyTokio(a) => not_built::run(a, "proxy-tokio", "proxy-tokio"),
    };
    if let Err(e) = r {
        eprintln!("bufring: {e}");
        std::process::exit(1);
    }
}

/// The CLI's error: anything with a message.
pub type CliResult = Result<(), Box<dyn std::error::Error>>;
