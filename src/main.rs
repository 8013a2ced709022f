//! The `pullahead` command: parses the command line and wires the library's
//! parts together. Nothing else lives here.

use clap::{Parser, Subcommand};

/// Event-driven, autoscaler-aware, predictive image prefetcher for Kubernetes.
#[derive(Debug, Parser)]
#[command(name = "pullahead", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Simulate a cluster under a load trace and write its events.
    Scenario(pullahead::scenario::Args),
    /// Convert a SimKube trace or a kubectl watch stream to events.
    Import(pullahead::import::Args),
    /// Record a live cluster's events to a JSONL file and/or a Kafka topic.
    Record(pullahead::record::Args),
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match cli.command {
        Command::Scenario(args) => {
            let s = pullahead::scenario::run(&args)?;
            eprintln!("{s:?}");
        }
        Command::Import(args) => {
            let s = pullahead::import::run(&args)?;
            eprintln!("{s:?}");
        }
        Command::Record(args) => {
            let summary = tokio::runtime::Runtime::new()?.block_on(pullahead::record::run(args))?;
            eprintln!(
                "recorded {} events ({} dropped)",
                summary.events, summary.dropped
            );
        }
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
