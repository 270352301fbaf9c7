//! `daybreak machines`: what the machine store remembers, and changes to it (through
//! [`crate::store::MachineStore`], whichever store it is).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};

use super::serve::StoreArgs;

#[derive(Args, Debug)]
pub struct MachinesArgs {
    #[command(subcommand)]
    command: Option<MachinesCommand>,
    /// The state directory the server uses (absolute, or relative to the working directory).
    #[arg(long, global = true, value_name = "DIR", default_value_os_t = artifacts::default_state_dir())]
    state_dir: PathBuf,
    #[command(flatten)]
    store: StoreArgs,
}

#[derive(Subcommand, Debug)]
pub enum MachinesCommand {
    /// Every machine remembered (the default): MAC, state, boots, last boot, firmware.
    List {
        #[command(flatten)]
        store: StoreArgs,
    },
    /// One machine's record, as JSON.
    Show {
        mac: pxe::Mac,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Install it again: its next network boot boots the image instead of its disk.
    Reinstall {
        mac: pxe::Mac,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Forget it (remembered again at its next boot).
    Forget {
        mac: pxe::Mac,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Put a machines file in a store replicas share (--store etcd://...): checked exactly as
    /// --machines FILE is, then every replica decides from it within seconds.
    Apply {
        #[arg(value_name = "FILE")]
        file: PathBuf,
        #[command(flatten)]
        store: StoreArgs,
    },
}

impl MachinesCommand {
    /// The store flags given after the subcommand.
    fn store(&self) -> &StoreArgs {
        match self {
            MachinesCommand::List { store }
            | MachinesCommand::Show { store, .. }
            | MachinesCommand::Reinstall { store, .. }
            | MachinesCommand::Forget { store, .. }
            | MachinesCommand::Apply { store, .. } => store,
        }
    }
}

pub fn command(a: MachinesArgs) -> ExitCode {
    use crate::store::{update, Change, StoreError};
    let command = a.command.unwrap_or(MachinesCommand::List {
        store: StoreArgs::default(),
    });
    // After the subcommand over before it: `daybreak machines list --store URL` as well.
    let config = command
        .store()
        .clone()
        .config(&a.store.config(&Default::default()));
    let store = match crate::store::open(&config, &a.state_dir) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    let unknown = |m: &pxe::Mac| {
        eprintln!(
            "error: {m} is not remembered in {} (see daybreak machines list)",
            store.describe()
        );
        ExitCode::FAILURE
    };
    let done = |r: Result<(), StoreError>| match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: cannot change {}: {e}", store.describe());
            ExitCode::FAILURE
        }
    };
    match command {
        MachinesCommand::List { .. } => {
            let mut list = Vec::new();
            store.with(&mut |all| list = all.values().map(|v| v.record.clone()).collect());
            list.sort_by_key(|r| r.mac);
            if list.is_empty() {
                println!(
                    "no machines remembered in {} (a machine is remembered when it fetches its boot script)",
                    store.describe()
                );
                return ExitCode::SUCCESS;
            }
            println!(
                "{:<17}  {:<14}  {:>5}  {:>9}  FIRMWARE",
                "MAC", "STATE", "BOOTS", "LAST BOOT"
            );
            let now = artifacts::now();
            for r in list {
                let state = match r.installed_at {
                    Some(t) => format!("installed {}", ago(now.saturating_sub(t))),
                    None => "not installed".into(),
                };
                println!(
                    "{:<17}  {:<14}  {:>5}  {:>9}  {}",
                    r.mac,
                    state,
                    r.boots,
                    format!("{} ago", ago(now.saturating_sub(r.last_seen))),
                    r.firmware.as_deref().unwrap_or("-")
                );
            }
            ExitCode::SUCCESS
        }
        MachinesCommand::Show { mac: m, .. } => match store.get(m) {
            Ok(Some(v)) => {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&v.record).unwrap_or_default()
                );
                ExitCode::SUCCESS
            }
            Ok(None) => unknown(&m),
            Err(e) => done(Err(e)),
        },
        MachinesCommand::Reinstall { mac: m, .. } => match update(&*store, m, &Change::Reinstall) {
            Ok(Some(_)) => {
                println!("{m}: its next network boot installs again");
                done(store.publish())
            }
            Ok(None) => unknown(&m),
            Err(e) => done(Err(e)),
        },
        MachinesCommand::Forget { mac: m, .. } => match store.forget(m) {
            Ok(true) => {
                println!("{m}: forgotten");
                done(store.publish())
            }
            Ok(false) => unknown(&m),
            Err(e) => done(Err(e)),
        },
        MachinesCommand::Apply { file, .. } if !store.is_shared() => {
            eprintln!(
                "error: {} is this host's own store; daybreak machines apply puts a machines file in a store replicas share (--store etcd://HOST:PORT). With the file store, give the server --machines {}",
                store.describe(),
                file.display()
            );
            ExitCode::FAILURE
        }
        MachinesCommand::Apply { file, .. } => match crate::fleet::apply(&*store, &file) {
            Ok(n) => {
                println!(
                    "{} ({n} profile{}) applied to {}: every replica decides from it within seconds",
                    file.display(),
                    if n == 1 { "" } else { "s" },
                    store.describe()
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::FAILURE
            }
        },
    }
}

pub fn ago(secs: u64) -> String {
    match secs {
        0..=119 => format!("{secs}s"),
        120..=7199 => format!("{}m", secs / 60),
        7200..=172_799 => format!("{}h", secs / 3600),
        _ => format!("{}d", secs / 86400),
    }
}
