//! The `pullahead` command: parses the command line and wires the library's
//! parts together. Nothing else lives here.

use std::fs::File;
use std::io::{BufWriter, Write};

use anyhow::Context;
use clap::{Parser, Subcommand};
use pullahead::{event, replay};

// Replay and the planner allocate many short strings per event; mimalloc
// serves them markedly faster than glibc's malloc.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Event-driven, autoscaler-aware, predictive image prefetcher for Kubernetes.
#[derive(Debug, Parser)]
#[command(name = "pullahead", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Replay event files, or a Kafka topic, through the policies and score
    /// them against each other.
    Replay(replay::cli::Args),
    /// Fit the predictive model on the first part of traces; score it on the rest.
    Tune(pullahead::tune::Args),
    /// Write a synthetic trace of any size (for benchmarks; `scenario` makes realistic ones).
    Synth(replay::cli::SynthArgs),
    /// Simulate a cluster under a load trace and write its events.
    Scenario(pullahead::scenario::Args),
    /// Convert a SimKube trace or a kubectl watch stream to events.
    Import(pullahead::import::Args),
    /// Run the node agent: pull this node's NodePrefetch images through CRI.
    Agent(pullahead::dispatch::agent::Args),
    /// Pull images through the node's CRI socket now and report each.
    Pull(pullahead::dispatch::pull::Args),
    /// Run the controller: watch the cluster, plan, and write NodePrefetch
    /// objects (leader only).
    Run(Box<pullahead::config::RunArgs>),
    /// Print the NodePrefetch CustomResourceDefinition as YAML.
    Crdgen,
    /// Record a live cluster's events to a JSONL file and/or a Kafka topic.
    Record(pullahead::record::Args),
}

impl Command {
    /// A batch command, which may keep the memory it frees (see
    /// [`pullahead::allocator`]); the services give it back.
    fn runs_to_completion(&self) -> bool {
        !matches!(
            self,
            Command::Agent(_) | Command::Run(_) | Command::Record(_)
        )
    }
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    if let Err(e) = run(Cli::parse()) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    if cli.command.runs_to_completion() {
        pullahead::allocator::keep_freed_memory();
    }
    match cli.command {
        Command::Replay(args) => replay_cmd(&args),
        Command::Tune(args) => tune_cmd(&args),
        Command::Synth(args) => {
            let header = event::Header::new(0.0, format!("pullahead synth --seed {}", args.seed));
            let mut out = event::EventWriter::create(&args.out, &header)?;
            replay::synth::generate(args.config(), &mut out)?;
            out.flush()?;
            Ok(())
        }
        Command::Scenario(args) => {
            let summary = pullahead::scenario::run(&args)?;
            eprintln!("{summary:?}");
            Ok(())
        }
        Command::Import(args) => {
            let summary = pullahead::import::run(&args)?;
            eprintln!("{summary:?}");
            Ok(())
        }
        Command::Agent(args) => {
            tokio::runtime::Runtime::new()?.block_on(pullahead::dispatch::agent::run(args))?;
            Ok(())
        }
        Command::Pull(args) => {
            tokio::runtime::Runtime::new()?
                .block_on(pullahead::dispatch::pull::run(args, &mut std::io::stdout()))?;
            Ok(())
        }
        Command::Run(args) => {
            tokio::runtime::Runtime::new()?.block_on(pullahead::run::main(*args))?;
            Ok(())
        }
        Command::Crdgen => {
            print!("{}", pullahead::dispatch::crd::crd_yaml()?);
            Ok(())
        }
        Command::Record(args) => {
            let summary = tokio::runtime::Runtime::new()?.block_on(pullahead::record::run(args))?;
            eprintln!(
                "recorded {} events ({} dropped)",
                summary.events, summary.dropped
            );
            Ok(())
        }
    }
}

/// Where one replay's events come from.
enum Source<'a> {
    File(&'a std::path::Path),
    Kafka(&'a replay::KafkaSource),
}

fn replay_cmd(args: &replay::cli::Args) -> anyhow::Result<()> {
    let mut opts = args.options()?;
    opts.sim.bind_times = args.report.is_some();
    let mut decisions = match &args.decisions {
        Some(path) => Some(BufWriter::new(
            File::create(path).with_context(|| format!("creating {}", path.display()))?,
        )),
        None => None,
    };
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let kafka = args.kafka_source()?;
    let sources = match &kafka {
        Some(k) => vec![Source::Kafka(k)],
        None => args.files.iter().map(|f| Source::File(f)).collect(),
    };
    let mut reports = Vec::new();
    for source in sources {
        let d = decisions.as_mut().map(|d| d as &mut dyn Write);
        let report = match source {
            Source::File(file) => replay::replay_file(file, &opts, d)?,
            Source::Kafka(k) => replay::replay_kafka(k, &opts, d)?,
        };
        if args.json {
            serde_json::to_writer(&mut out, &report)?;
            writeln!(out)?;
        } else {
            write!(out, "{}", replay::report::table(&report))?;
        }
        if args.report.is_some() {
            reports.push(report);
        }
    }
    if let Some(mut d) = decisions {
        d.flush().context("writing decisions")?;
    }
    if let Some(path) = &args.report {
        write_page(path, &replay::html::replay_page(&reports)?)?;
    }
    Ok(())
}

fn write_page(path: &std::path::Path, page: &str) -> anyhow::Result<()> {
    std::fs::write(path, page).with_context(|| format!("writing {}", path.display()))
}

fn tune_cmd(args: &pullahead::tune::Args) -> anyhow::Result<()> {
    let command = std::env::args().collect::<Vec<_>>().join(" ");
    if args.cross_validate {
        anyhow::ensure!(
            args.report.is_none(),
            "--report is not made with --cross-validate"
        );
        let cv = pullahead::crossval::cross_validate(&args.options(command)?)?;
        let text = serde_json::to_string_pretty(&cv.model)?;
        std::fs::write(&args.out, text + "\n")
            .with_context(|| format!("writing {}", args.out.display()))?;
        let stdout = std::io::stdout();
        let mut out = stdout.lock();
        if args.json {
            serde_json::to_writer(&mut out, &cv.folds)?;
            writeln!(out)?;
        } else {
            write!(out, "{}", pullahead::crossval::table(&cv.folds))?;
            writeln!(
                out,
                "model fitted on every file written to {}",
                args.out.display()
            )?;
        }
        return Ok(());
    }
    let tuned = pullahead::tune::tune(&args.options(command)?)?;
    let text = serde_json::to_string_pretty(&tuned.model)?;
    std::fs::write(&args.out, text + "\n")
        .with_context(|| format!("writing {}", args.out.display()))?;
    if let Some(path) = &args.report {
        write_page(path, &tuned.html_report(&args.out)?)?;
    }
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    if args.json {
        for r in &tuned.held_back {
            serde_json::to_writer(&mut out, r)?;
            writeln!(out)?;
        }
        return Ok(());
    }
    writeln!(out, "training part: threshold → capture, waste share")?;
    for t in &tuned.thresholds {
        let mark = if t.threshold == tuned.model.threshold {
            "  <- chosen"
        } else {
            ""
        };
        writeln!(
            out,
            "  {:>5.2}  {:>6.3}  {:>6.3}{mark}",
            t.threshold, t.capture, t.waste_share
        )?;
    }
    writeln!(out, "model written to {}\n", args.out.display())?;
    for r in &tuned.held_back {
        write!(out, "{}", replay::report::table(r))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn cli_is_well_formed() {
        super::Cli::command().debug_assert();
    }
}
