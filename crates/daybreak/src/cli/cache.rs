//! `daybreak cache`: the artifact store's entries and the layer cache.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};

#[derive(Subcommand, Debug)]
pub enum CacheCommand {
    /// List built artifacts (newest first) and the size of the layer cache.
    List(StateDirArg),
    /// Remove cached layer blobs and leftovers of interrupted runs; --all removes built
    /// artifacts and downloaded ISOs too.
    Prune {
        #[command(flatten)]
        state: StateDirArg,
        /// Also remove every built artifact and downloaded ISO.
        #[arg(long)]
        all: bool,
    },
}

#[derive(Args, Debug)]
pub struct StateDirArg {
    /// The state directory (absolute, or relative to the working directory).
    #[arg(long, value_name = "DIR", default_value_os_t = artifacts::default_state_dir())]
    state_dir: PathBuf,
}

pub fn command(c: CacheCommand) -> ExitCode {
    use artifacts::Store;
    let human = super::progress::human;
    let dir = match &c {
        CacheCommand::List(a) => &a.state_dir,
        CacheCommand::Prune { state, .. } => &state.state_dir,
    };
    let store = match Store::open(dir) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    match c {
        CacheCommand::List(_) => {
            let list = store.list();
            if list.is_empty() {
                println!("no built artifacts in {}", store.root().display());
            }
            for e in &list {
                let m = &e.meta;
                let age = artifacts::now().saturating_sub(m.created);
                println!(
                    "{}  {:>9}  {}  {} ({}, {}, kernel {}) {} ago",
                    m.digest,
                    human(e.size()),
                    e.dir.display(),
                    m.source,
                    m.arch,
                    m.compression,
                    m.kernel,
                    super::machines::ago(age)
                );
            }
            let (n, bytes) = store.blobs();
            println!("layer cache: {n} blobs, {}", human(bytes));
            ExitCode::SUCCESS
        }
        CacheCommand::Prune { all, .. } => {
            let p = store.prune(all);
            println!("removed {} entries, {}", p.entries, human(p.bytes));
            ExitCode::SUCCESS
        }
    }
}
