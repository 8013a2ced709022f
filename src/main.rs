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
    /// Print the NodePrefetch CustomResourceDefinition as YAML.
    Crdgen,
    /// Pull images through the node's CRI socket now and report each.
    Pull(pullahead::dispatch::pull::Args),
    /// Run the node agent: pull this node's NodePrefetch images through CRI.
    Agent(pullahead::dispatch::agent::Args),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .try_init();
    match cli.command {
        Command::Crdgen => print!("{}", pullahead::dispatch::crd::crd_yaml()?),
        Command::Pull(args) => {
            let rt = tokio::runtime::Runtime::new()?;
            rt.block_on(pullahead::dispatch::pull::run(args, &mut std::io::stdout()))?;
        }
        Command::Agent(args) => {
            tokio::runtime::Runtime::new()?.block_on(pullahead::dispatch::agent::run(args))?;
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
