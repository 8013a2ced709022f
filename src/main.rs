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
    /// Run the controller: watch the cluster, plan, and write NodePrefetch
    /// objects (leader only).
    Run(Box<pullahead::config::RunArgs>),
    /// Print the NodePrefetch CustomResourceDefinition as YAML.
    Crdgen,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = tokio::runtime::Runtime::new()?;
    match cli.command {
        Command::Run(args) => runtime.block_on(pullahead::run::main(*args))?,
        Command::Crdgen => print!("{}", pullahead::dispatch::crd::crd_yaml()?),
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
