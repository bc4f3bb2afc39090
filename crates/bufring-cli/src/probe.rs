//! `bufring probe`: the kernel release and each feature, yes or no.

use bufring::Probe;

/// Options of `bufring probe`.
#[derive(clap::Args)]
pub struct Args {
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

pub fn run(args: Args) -> crate::CliResult {
    let p = Probe::run()?;
    let rows = [
        ("buffer_ring", p.buffer_ring, "provided buffer rings (5.19)"),
        (
            "kernel_allocated_ring",
            p.kernel_allocated_ring,
            "kernel-allocated rings (6.4)",
        ),
        (
            "incremental",
            p.incremental,
            "incremental consumption (6.12)",
        ),
        (
            "min_left",
            p.min_left,
            "min_left for incremental rings (2026)",
        ),
        ("pbuf_status", p.pbuf_status, "PBUF_STATUS head query (6.8)"),
        ("bundles", p.bundles, "receive bundles (6.10)"),
        (
            "incremental_bundles",
            p.incremental_bundles,
            "bundles on incremental rings (6.15)",
        ),
        ("read_multishot", p.read_multishot, "multishot read (6.7)"),
    ];
    if args.json {
        let mut obj = serde_json::Map::new();
        obj.insert("kernel".into(), p.kernel.clone().into());
        for (name, yes, _) in rows {
            obj.insert(name.into(), yes.into());
        }
        println!("{}", serde_json::Value::Object(obj));
    } else {
        println!("kernel {}", p.kernel);
        for (name, yes, what) in rows {
            println!(
                "  {:<22} {:<4} {}",
                name,
                if yes { "yes" } else { "no" },
                what
            );
        }
    }
    Ok(())
}
