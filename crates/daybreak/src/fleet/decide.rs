//! How one machine boots now, as a pure function of what is known: the machine, its profile,
//! its record, the state of the image it would boot. What else should happen (a boot to
//! remember, a step to tell, an image to build) comes back as [`Effect`]s for the fleet to
//! carry out; nothing here locks, writes or waits.

use pxe::{CpuArch, Machine};

use super::images::{Key, State, Which};
use super::profiles::{Action, Profile};
use crate::store::{Change, Record};

/// Boot scripts of one machine closer together than this (seconds) are one boot in the store.
pub const BOOT_GAP: u64 = 60;

/// What the decision is made from.
#[derive(Debug, Clone)]
pub struct Facts<'a> {
    pub machine: Machine,
    /// The boot path of its offer, when DHCP said (`BIOS iPXE: iPXE: the boot script`).
    pub firmware: Option<String>,
    pub profile: Option<&'a Profile>,
    pub record: Option<&'a Record>,
    /// The image it would boot, and how far that one is.
    pub image: (Which, State),
    /// Unix seconds.
    pub now: u64,
    /// Machines get URLs of their own (profiles, or a template that asks for `.daybreak.*`).
    pub personal: bool,
    /// The command has a cloud-config (a template, or a file), which a machine without one in
    /// its profile gets.
    pub common_config: bool,
}

/// What a machine boots now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Ignore,
    /// Its disk, and why.
    Local(&'static str),
    /// Ask again: its image is not ready.
    Wait(&'static str),
    /// Nothing it can boot here, and why.
    Refuse(&'static str),
    Boot(Boot),
}

/// How a machine boots an image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Boot {
    /// Another image than the command's, by key.
    pub image: Option<Key>,
    /// Kernel arguments of its profile, in place of the command's.
    pub cmdline: Option<String>,
    /// It gets its own cloud-config URL.
    pub config: bool,
}

/// What the fleet does besides answering.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// A change to the machine's record.
    Record(Change),
    /// It was told to boot from its disk (a step of its timeline).
    LocalBoot,
    /// An image to build.
    Build(Key),
}

pub fn decide(f: &Facts<'_>) -> (Outcome, Vec<Effect>) {
    let mut effects = Vec::new();
    // One boot, one write: a machine asking again within a minute (a loader that retries, one
    // waiting for its image) is the same boot.
    if f.record.is_none_or(|r| r.last_seen + BOOT_GAP < f.now) {
        effects.push(Effect::Record(Change::Booted {
            at: f.now,
            arch: f.machine.arch,
            firmware: f.firmware.clone(),
            uuid: f.machine.uuid,
        }));
    }
    let action = f.profile.map_or(Action::Install, |p| p.action);
    let installed = f.record.is_some_and(|r| r.installed_at.is_some());
    let outcome = match action {
        Action::Ignore => Outcome::Ignore,
        Action::Local => Outcome::Local("its profile says action: local"),
        Action::Install if installed => Outcome::Local(
            "its install finished (daybreak machines reinstall MAC to install again)",
        ),
        Action::Install | Action::Live => boot(f, &mut effects),
    };
    if matches!(outcome, Outcome::Local(_)) {
        effects.push(Effect::LocalBoot);
    }
    (outcome, effects)
}

fn boot(f: &Facts<'_>, effects: &mut Vec<Effect>) -> Outcome {
    let image = match &f.image {
        (Which::Main, _) => None,
        (Which::NoKernel, _) => {
            return Outcome::Refuse("this server has no kernel for its architecture")
        }
        (Which::Other(key), State::Missing) => {
            effects.push(Effect::Build(key.clone()));
            return Outcome::Wait("its image is being prepared");
        }
        (Which::Other(_), State::Building) => return Outcome::Wait("its image is being prepared"),
        (Which::Other(_), State::Failed) => {
            return Outcome::Refuse("its image cannot be served (the server's log says why)")
        }
        (Which::Other(_), State::Ready(Some(k))) if mismatch(f.machine.arch, *k) => {
            return Outcome::Refuse("its image's kernel is for another architecture")
        }
        (Which::Other(key), State::Ready(_)) => Some(key.clone()),
    };
    let has_config = f.profile.is_some_and(|p| p.cloud_config.is_some()) || f.common_config;
    Outcome::Boot(Boot {
        // Another image's plan has no cloud-config of its own: the machine's URL serves the
        // command's.
        config: (f.personal || image.is_some()) && has_config,
        image,
        cmdline: f.profile.and_then(|p| p.cmdline.clone()),
    })
}

fn mismatch(machine: Option<CpuArch>, kernel: CpuArch) -> bool {
    machine.is_some_and(|a| a != kernel)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::profiles::Profiles;
    use pxe::Mac;
    use std::path::Path;

    const M: Mac = Mac([0x52, 0x54, 0, 0, 0, 1]);

    fn profiles() -> Profiles {
        Profiles::parse(
            "- mac: 52:54:00:00:00:01\n  name: live\n  action: live\n  netboot.cmdline: quiet\n\
             - mac: 52:54:00:00:00:02\n  name: local\n  action: local\n\
             - mac: 52:54:00:00:00:03\n  name: ignore\n  action: ignore\n\
             - mac: 52:54:00:00:00:04\n  name: own\n  container_image: x/y:z\n\
             - mac: 52:54:00:00:00:05\n  name: cc\n  cloud_config: '#cloud-config'\n",
            Path::new("."),
        )
        .unwrap()
    }

    fn key() -> Key {
        (
            crate::fleet::profiles::Image::Container("x/y:z".into()),
            Some(CpuArch::Arm64),
        )
    }

    /// (profile, record, arch, which, state, personal, common) -> outcome, writes a record,
    /// other effects.
    type Row<'a> = (
        Option<&'a Profile>,
        Option<&'a Record>,
        Option<CpuArch>,
        Which,
        State,
        bool,
        bool,
        Outcome,
        bool,
        Vec<Effect>,
    );

    #[test]
    fn every_case_in_a_table() {
        let p = profiles();
        let by = |name: &str| p.entries.iter().find(|e| e.name == name);
        let seen = Record {
            mac: M,
            last_seen: 990,
            ..Default::default()
        };
        let installed = Record {
            installed_at: Some(500),
            ..seen.clone()
        };
        let old = Record {
            last_seen: 10,
            ..seen.clone()
        };
        let boot = |image, cmdline: Option<&str>, config| {
            Outcome::Boot(Boot {
                image,
                cmdline: cmdline.map(str::to_string),
                config,
            })
        };
        let arm = Some(CpuArch::Arm64);
        let amd = Some(CpuArch::Amd64);
        use State::*;
        let rows: Vec<Row> = vec![
            (
                None,
                None,
                amd,
                Which::Main,
                Missing,
                false,
                true,
                boot(None, None, false),
                true,
                vec![],
            ),
            (
                None,
                None,
                amd,
                Which::Main,
                Missing,
                true,
                true,
                boot(None, None, true),
                true,
                vec![],
            ),
            (
                None,
                None,
                amd,
                Which::Main,
                Missing,
                true,
                false,
                boot(None, None, false),
                true,
                vec![],
            ),
            (
                None,
                Some(&seen),
                amd,
                Which::Main,
                Missing,
                false,
                true,
                boot(None, None, false),
                false,
                vec![],
            ),
            (
                None,
                Some(&old),
                amd,
                Which::Main,
                Missing,
                false,
                true,
                boot(None, None, false),
                true,
                vec![],
            ),
            (
                None,
                Some(&installed),
                amd,
                Which::Main,
                Missing,
                true,
                true,
                Outcome::Local(
                    "its install finished (daybreak machines reinstall MAC to install again)",
                ),
                false,
                vec![Effect::LocalBoot],
            ),
            (
                by("live"),
                Some(&installed),
                amd,
                Which::Main,
                Missing,
                true,
                true,
                boot(None, Some("quiet"), true),
                false,
                vec![],
            ),
            (
                by("local"),
                None,
                amd,
                Which::Main,
                Missing,
                true,
                true,
                Outcome::Local("its profile says action: local"),
                true,
                vec![Effect::LocalBoot],
            ),
            (
                by("ignore"),
                None,
                amd,
                Which::Main,
                Missing,
                true,
                true,
                Outcome::Ignore,
                true,
                vec![],
            ),
            (
                by("cc"),
                None,
                amd,
                Which::Main,
                Missing,
                true,
                false,
                boot(None, None, true),
                true,
                vec![],
            ),
            (
                None,
                None,
                arm,
                Which::NoKernel,
                Missing,
                true,
                true,
                Outcome::Refuse("this server has no kernel for its architecture"),
                true,
                vec![],
            ),
            (
                by("own"),
                None,
                arm,
                Which::Other(key()),
                Missing,
                false,
                true,
                Outcome::Wait("its image is being prepared"),
                true,
                vec![Effect::Build(key())],
            ),
            (
                by("own"),
                None,
                arm,
                Which::Other(key()),
                Building,
                false,
                true,
                Outcome::Wait("its image is being prepared"),
                true,
                vec![],
            ),
            (
                by("own"),
                None,
                arm,
                Which::Other(key()),
                Failed,
                false,
                true,
                Outcome::Refuse("its image cannot be served (the server's log says why)"),
                true,
                vec![],
            ),
            (
                by("own"),
                None,
                arm,
                Which::Other(key()),
                Ready(amd),
                false,
                true,
                Outcome::Refuse("its image's kernel is for another architecture"),
                true,
                vec![],
            ),
            // Another image's plan has no cloud-config: the machine's own URL serves the command's.
            (
                by("own"),
                None,
                arm,
                Which::Other(key()),
                Ready(arm),
                false,
                true,
                boot(Some(key()), None, true),
                true,
                vec![],
            ),
            (
                by("own"),
                None,
                None,
                Which::Other(key()),
                Ready(arm),
                false,
                false,
                boot(Some(key()), None, false),
                true,
                vec![],
            ),
        ];
        for (i, (profile, record, arch, which, state, personal, common, want, writes, effects)) in
            rows.into_iter().enumerate()
        {
            let f = Facts {
                machine: Machine {
                    mac: M,
                    uuid: None,
                    arch,
                },
                firmware: Some("BIOS PXE: BIOS PXE, then iPXE".into()),
                profile,
                record,
                image: (which, state),
                now: 1000,
                personal,
                common_config: common,
            };
            let (got, mut got_effects) = decide(&f);
            assert_eq!(got, want, "row {i}");
            let wrote = got_effects
                .first()
                .is_some_and(|e| matches!(e, Effect::Record(_)));
            assert_eq!(wrote, writes, "row {i}: {got_effects:?}");
            if wrote {
                let Effect::Record(Change::Booted {
                    at,
                    arch: a,
                    firmware,
                    ..
                }) = got_effects.remove(0)
                else {
                    panic!("row {i}: a boot is remembered as Booted");
                };
                assert_eq!((at, a, firmware.is_some()), (1000, arch, true), "row {i}");
            }
            assert_eq!(got_effects, effects, "row {i}");
        }
    }
}
