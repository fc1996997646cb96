//! The `tributary` command: `tributary launch --processes N --workers W [--hostfile F] -- PROGRAM ARGS...`
//! starts N processes of a Tributary program on this machine as one cluster. See `tributary launch --help`.

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "tributary", version, about = "Tributary stream-processing runtime tools")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start N processes of a Tributary program on this machine, connected as one cluster.
    ///
    /// Writes a host file with free loopback ports, appends `--workers W --processes N --process I --hostfile F`
    /// to each process's arguments, prefixes each process's stderr with `[pI]`, passes stdout through unchanged,
    /// and exits non-zero (stopping the rest) as soon as one process fails.
    Launch(tributary::runtime::launch::LaunchArgs),
}

fn main() -> anyhow::Result<()> {
    tributary::runtime::logging::init();
    let cli = Cli::parse();
    match cli.command {
        Command::Launch(args) => {
            let code = tributary::runtime::launch::launch(&args)?;
            std::process::exit(code);
        }
    }
}
