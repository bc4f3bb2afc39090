//! `bufring bench`: bufring against the physical limit and the alternatives, side by side.
//!
//! Every workload runs all its contenders in one process, interleaved (A B C A B C ...) over
//! several rounds, and reports each figure's median and min–max, with the ratio to the
//! workload's reference. Runs are bounded in bytes and time and use loopback only.
//!
//! Layout: `stream.rs`, `fanin.rs`, `hotpath.rs` (one workload each, with their contenders),
//! `c.rs` (the hand-written liburing contenders), `sys.rs` (pinning, rusage, rlimits),
//! `report.rs` (table, JSON, plot).

mod c;
mod fanin;
mod hotpath;
mod report;
mod rr;
mod stream;
mod sys;

use std::time::Duration;

/// Options of `bufring bench`.
#[derive(clap::Args)]
pub struct Args {
    /// The workload.
    #[command(subcommand)]
    workload: Workload,
    /// Options every workload has.
    #[command(flatten)]
    common: Common,
}

/// Options shared by the workloads.
#[derive(clap::Args, Clone)]
pub struct Common {
    /// Short run (within about 15 s): fewer rounds, fewer bytes.
    #[arg(long, global = true)]
    pub quick: bool,
    /// One JSON object per contender and figure instead of a table.
    #[arg(long, global = true)]
    pub json: bool,
    /// Draw the main figure of each scenario into this PNG file.
    #[arg(long, global = true, value_name = "FILE.png")]
    pub plot: Option<std::path::PathBuf>,
    /// Rounds (each contender runs once per round); default 5, 3 with --quick.
    #[arg(long, global = true)]
    pub rounds: Option<usize>,
    /// Run only these contenders (comma-separated names, as printed).
    #[arg(long, global = true, value_delimiter = ',')]
    pub only: Vec<String>,
}

#[derive(clap::Subcommand)]
enum Workload {
    /// Bulk TCP receive on 1 and 4 loopback connections.
    Stream(stream::Args),
    /// Many mostly idle connections sending small messages.
    Fanin(fanin::Args),
    /// User-space cost per completion on a fabricated completion stream.
    Hotpath(hotpath::Args),
    /// Request/response latency: tokio's server against bufring-tokio's.
    Rr(rr::Args),
    /// The sending side of `fanin`, run by it as a child process.
    #[command(hide = true)]
    FaninSender(fanin::SenderArgs),
}

pub fn run(args: Args) -> crate::CliResult {
    // Count the CPUs before any thread pins itself.
    sys::cpus();
    let results = match args.workload {
        Workload::Stream(a) => stream::run(&a, &args.common),
        Workload::Fanin(a) => fanin::run(&a, &args.common),
        Workload::Hotpath(a) => hotpath::run(&a, &args.common),
        Workload::Rr(a) => rr::run(&a, &args.common),
        Workload::FaninSender(a) => return fanin::sender_main(&a),
    }
    .map_err(|e| e.to_string())?;
    report::print(&results, &args.common);
    if let Some(path) = &args.common.plot {
        report::plot(&results, path)?;
        if !args.common.json {
            println!("plot written to {}", path.display());
        }
    }
    Ok(())
}

impl Common {
    fn rounds(&self) -> usize {
        self.rounds.unwrap_or(if self.quick { 3 } else { 5 }).max(1)
    }

    fn wants(&self, name: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|o| o == name)
    }
}

/// The error type of a run.
pub type BenchResult<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// A current-thread runtime, a `LocalSet` and a bufring-tokio `Uring` from `builder`: its
/// driver on a thread of its own, or (`in_runtime`) a task of that `LocalSet`.
fn tokio_uring(
    builder: bufring_tokio::Builder,
    in_runtime: bool,
) -> BenchResult<(
    tokio::runtime::Runtime,
    tokio::task::LocalSet,
    bufring_tokio::Uring,
)> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .enable_io()
        .build()?;
    let local = tokio::task::LocalSet::new();
    let uring = if in_runtime {
        let _g = rt.enter();
        let (uring, driver) = builder.build_local()?;
        local.spawn_local(driver);
        uring
    } else {
        builder.build()?
    };
    Ok((rt, local, uring))
}

/// One measured value of one run.
#[derive(Debug, Clone, Copy)]
pub struct Figure {
    /// Short name (JSON key).
    pub name: &'static str,
    /// Unit, for the table.
    pub unit: &'static str,
    /// The value.
    pub value: f64,
    /// Whether higher is better (for the ratio's reading only).
    pub higher_is_better: bool,
}

impl Figure {
    pub fn up(name: &'static str, unit: &'static str, value: f64) -> Self {
        Figure {
            name,
            unit,
            value,
            higher_is_better: true,
        }
    }
    pub fn down(name: &'static str, unit: &'static str, value: f64) -> Self {
        Figure {
            name,
            unit,
            value,
            higher_is_better: false,
        }
    }
}

/// A contender of a workload: something that runs one measured round.
///
/// Adding a contender is a few lines: a variant of the workload's contender enum and its arm
/// in the workload's `run_once`.
pub trait Contender {
    /// The name printed in tables and JSON.
    fn name(&self) -> String;
    /// One measured run; the first figure is the scenario's main one (plotted, ratioed).
    fn run_once(&mut self) -> BenchResult<Vec<Figure>>;
}

/// Results of one scenario (a workload with fixed parameters).
pub struct Scenario {
    pub workload: &'static str,
    /// e.g. "1 connection".
    pub title: String,
    /// Name of the reference contender (ratios are to its medians).
    pub reference: String,
    /// Figures to plot, one panel each (empty: the main figure).
    pub plot: Vec<&'static str>,
    /// Per contender, in run order: its name and every round's figures; or why it was skipped.
    pub rows: Vec<Row>,
}

pub struct Row {
    pub contender: String,
    pub rounds: Vec<Vec<Figure>>,
    pub skipped: Option<String>,
}

/// Runs `contenders` interleaved for `rounds` rounds: A B C A B C ...
/// A contender that fails is reported as skipped with its error; the others go on.
pub fn interleave(
    workload: &'static str,
    title: String,
    reference: &str,
    mut contenders: Vec<Box<dyn Contender + '_>>,
    skipped: Vec<(String, String)>,
    rounds: usize,
    deadline: Duration,
) -> Scenario {
    let start = std::time::Instant::now();
    let mut rows: Vec<Row> = contenders
        .iter()
        .map(|c| Row {
            contender: c.name(),
            rounds: Vec::new(),
            skipped: None,
        })
        .collect();
    for round in 0..rounds {
        if round > 0 && start.elapsed() > deadline {
            eprintln!("bench: {title}: time budget used up after {round} rounds");
            break;
        }
        for (c, row) in contenders.iter_mut().zip(rows.iter_mut()) {
            if row.skipped.is_some() {
                continue;
            }
            match c.run_once() {
                Ok(figs) => row.rounds.push(figs),
                Err(e) => row.skipped = Some(format!("failed: {e}")),
            }
        }
    }
    for (name, why) in skipped {
        rows.push(Row {
            contender: name,
            rounds: Vec::new(),
            skipped: Some(why),
        });
    }
    Scenario {
        workload,
        title,
        plot: Vec::new(),
        reference: reference.to_string(),
        rows,
    }
}

impl Scenario {
    /// Plots these figures, one panel each, instead of the main figure alone.
    pub fn plotting(mut self, figures: &[&'static str]) -> Self {
        self.plot = figures.to_vec();
        self
    }
}

/// Median, min and max of a set of values.
pub fn summary(values: &[f64]) -> (f64, f64, f64) {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return (f64::NAN, f64::NAN, f64::NAN);
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    let med = if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    };
    (med, v[0], v[n - 1])
}

const KIB: usize = 1024;
const MIB: usize = 1024 * 1024;

/// Human size: "64 KiB", "1 MiB".
pub fn size_name(n: usize) -> String {
    if n >= MIB && n % MIB == 0 {
        format!("{}M", n / MIB)
    } else if n >= KIB && n % KIB == 0 {
        format!("{}K", n / KIB)
    } else {
        format!("{n}")
    }
}
