//! One boot's own URLs. Each boot script that gives a machine its own cloud-config makes a
//! grant: a random nonce its URLs are keyed by ([`crate::tokens`]), and the profile chosen for
//! that boot, which its cloud-config is rendered from whatever happens meanwhile. The
//! cloud-config opens [`CONFIG_FETCHES`] times within [`CONFIG_WINDOW`] of the script; the
//! install callback opens once, within [`INSTALL_WINDOW`]; both only for the machine itself (the
//! router asks [`crate::identity`] first). The next boot's script makes a new grant and the old
//! URLs close; so do `daybreak machines reinstall` and `forget`.
//!
//! The nonce is kept in the machine's record as well, so a machine that was given its URLs
//! before a restart of the server can still use them after it (its cloud-config then rendered
//! from its profile as the restarted server chooses it).

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use pxe::Mac;

use super::profiles::Profile;
use crate::store::Grant;

/// Times a boot's cloud-config may be fetched (a retry or two of the installer).
pub const CONFIG_FETCHES: u8 = 3;
/// How long after its script a boot's cloud-config may be fetched.
pub const CONFIG_WINDOW: Duration = Duration::from_secs(15 * 60);
/// How long after its script a boot's install may call back (an install of a large image over
/// a slow link takes a while).
pub const INSTALL_WINDOW: Duration = Duration::from_secs(24 * 3600);
/// Grants held; past this the oldest go.
const MAX_GRANTS: usize = 16_384;

#[derive(Debug, Clone)]
struct Held {
    nonce: String,
    at: Instant,
    configs_left: u8,
    /// The profile of the boot's decision (`None`: the command's cloud-config).
    profile: Option<Profile>,
    /// Seen in the store: from then on, a record without it means it was taken back.
    stored: bool,
}

/// What a machine's URL opened.
#[derive(Debug, Clone)]
pub struct Opened {
    pub nonce: String,
    pub profile: Option<Profile>,
}

/// Why a machine's URL did not open (for the log).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Closed {
    /// No boot of this machine was given URLs (or its tag is not this boot's).
    NotThisBoot,
    /// Past its window, or its fetches used.
    Used,
}

#[derive(Debug, Default)]
pub struct Grants {
    held: Mutex<HashMap<Mac, Held>>,
}

impl Grants {
    /// The nonce of `mac`'s boot this process holds, if any.
    pub fn held(&self, mac: Mac) -> Option<String> {
        let held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        held.get(&mac).map(|h| h.nonce.clone())
    }

    /// A new grant for `mac`'s boot, deciding `profile`; the nonce its URLs are keyed by.
    pub fn issue(&self, mac: Mac, profile: Option<Profile>, nonce: String, now: Instant) {
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        crate::bounded::make_room(&mut held, &mac, MAX_GRANTS, |h| h.at);
        held.insert(
            mac,
            Held {
                nonce,
                at: now,
                configs_left: CONFIG_FETCHES,
                profile,
                stored: false,
            },
        );
    }

    /// The grant of `mac`'s boot whose nonce `opens` accepts: this process's, or after a
    /// restart the one in its record (`stored`, its profile then `chosen`).
    fn find<'a>(
        held: &'a mut HashMap<Mac, Held>,
        mac: Mac,
        opens: &dyn Fn(&str) -> bool,
        stored: Option<&Grant>,
        chosen: impl FnOnce() -> Option<Profile>,
        now: Instant,
    ) -> Result<&'a mut Held, Closed> {
        crate::bounded::make_room(held, &mac, MAX_GRANTS, |h| h.at);
        let h = match held.entry(mac) {
            Entry::Occupied(e) => e.into_mut(),
            Entry::Vacant(e) => {
                let g = stored.filter(|g| g.is_valid()).ok_or(Closed::NotThisBoot)?;
                let age = Duration::from_secs(artifacts::now().saturating_sub(g.at));
                e.insert(Held {
                    nonce: g.nonce.clone(),
                    at: now.checked_sub(age).unwrap_or(now),
                    configs_left: CONFIG_FETCHES,
                    profile: chosen(),
                    stored: true,
                })
            }
        };
        match opens(&h.nonce) {
            true => Ok(h),
            false => Err(Closed::NotThisBoot),
        }
    }

    /// Opens `mac`'s cloud-config once more, if its tag is this boot's (`opens`) and it is
    /// within its window and fetches.
    pub fn config(
        &self,
        mac: Mac,
        opens: &dyn Fn(&str) -> bool,
        stored: Option<&Grant>,
        chosen: impl FnOnce() -> Option<Profile>,
        now: Instant,
    ) -> Result<Opened, Closed> {
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        let h = Self::find(&mut held, mac, opens, stored, chosen, now)?;
        if now.saturating_duration_since(h.at) > CONFIG_WINDOW || h.configs_left == 0 {
            return Err(Closed::Used);
        }
        h.configs_left -= 1;
        Ok(Opened {
            nonce: h.nonce.clone(),
            profile: h.profile.clone(),
        })
    }

    /// Opens `mac`'s install callback, once: the grant is gone after it (its nonce returned,
    /// for [`Grants::restore`]).
    pub fn install(
        &self,
        mac: Mac,
        opens: &dyn Fn(&str) -> bool,
        stored: Option<&Grant>,
        now: Instant,
    ) -> Result<String, Closed> {
        self.open_install(mac, opens, stored, now, true)
    }

    /// As [`Grants::install`], without taking the grant: for a report that the install failed.
    pub fn check_install(
        &self,
        mac: Mac,
        opens: &dyn Fn(&str) -> bool,
        stored: Option<&Grant>,
        now: Instant,
    ) -> Result<(), Closed> {
        self.open_install(mac, opens, stored, now, false)
            .map(|_| ())
    }

    /// Whether `mac`'s install callback opens (its nonce), the grant taken when `take`: under
    /// one lock, so two callbacks at once cannot both take it.
    fn open_install(
        &self,
        mac: Mac,
        opens: &dyn Fn(&str) -> bool,
        stored: Option<&Grant>,
        now: Instant,
        take: bool,
    ) -> Result<String, Closed> {
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        let h = Self::find(&mut held, mac, opens, stored, || None, now)?;
        if now.saturating_duration_since(h.at) > INSTALL_WINDOW {
            return Err(Closed::Used);
        }
        let nonce = h.nonce.clone();
        if take {
            held.remove(&mac);
        }
        Ok(nonce)
    }

    /// Gives back a grant taken by [`Grants::install`] when its install could not be
    /// remembered: the machine calls back again.
    pub fn restore(&self, mac: Mac, nonce: String, now: Instant) {
        self.issue(mac, None, nonce, now);
    }

    /// Follows the store: a grant seen in its machine's record and since gone from it (the
    /// machine told to reinstall, or forgotten) is taken back. `in_store` is the nonce a
    /// record holds now.
    pub fn follow(&self, in_store: impl Fn(Mac) -> Option<String>) {
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        held.retain(|mac, h| match in_store(*mac) {
            Some(n) if n == h.nonce => {
                h.stored = true;
                true
            }
            _ => !h.stored,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: Mac = Mac([0x52, 0x54, 0, 0, 0, 0xa]);
    const N1: &str = "0123456789abcdef0123456789abcdef";
    const N2: &str = "fedcba9876543210fedcba9876543210";

    fn is(n: &'static str) -> impl Fn(&str) -> bool {
        move |x| x == n
    }

    #[test]
    fn a_boots_cloud_config_opens_three_times_in_its_window_and_its_install_once() {
        let g = Grants::default();
        let t = Instant::now();
        assert_eq!(
            g.config(A, &is(N1), None, || None, t).unwrap_err(),
            Closed::NotThisBoot
        );
        g.issue(A, None, N1.into(), t);
        for _ in 0..CONFIG_FETCHES {
            assert!(g.config(A, &is(N1), None, || None, t).is_ok());
        }
        assert_eq!(
            g.config(A, &is(N1), None, || None, t).unwrap_err(),
            Closed::Used
        );
        // Another tag (an older boot's) opens nothing.
        assert_eq!(
            g.install(A, &is(N2), None, t).unwrap_err(),
            Closed::NotThisBoot
        );
        assert!(g.install(A, &is(N1), None, t).is_ok());
        assert_eq!(
            g.install(A, &is(N1), None, t).unwrap_err(),
            Closed::NotThisBoot
        );
    }

    #[test]
    fn the_next_boot_closes_the_last_ones_urls_and_windows_close() {
        let g = Grants::default();
        let t = Instant::now();
        g.issue(A, None, N1.into(), t);
        g.issue(A, None, N2.into(), t);
        assert!(g.config(A, &is(N1), None, || None, t).is_err());
        assert!(g.config(A, &is(N2), None, || None, t).is_ok());
        let late = t + CONFIG_WINDOW + Duration::from_secs(1);
        assert_eq!(
            g.config(A, &is(N2), None, || None, late).unwrap_err(),
            Closed::Used
        );
        assert!(g.install(A, &is(N2), None, late).is_ok());
    }

    #[test]
    fn a_grant_taken_back_in_the_store_closes_and_one_in_the_store_survives_a_restart() {
        let g = Grants::default();
        let t = Instant::now();
        g.issue(A, None, N1.into(), t);
        // Its write has not landed yet: kept.
        g.follow(|_| None);
        assert!(g.config(A, &is(N1), None, || None, t).is_ok());
        g.follow(|_| Some(N1.into()));
        // Reinstalled or forgotten in another process: gone.
        g.follow(|_| None);
        assert!(g.config(A, &is(N1), None, || None, t).is_err());
        // A restarted server finds it in the record; a garbled one opens nothing.
        let restarted = Grants::default();
        let stored = Grant {
            nonce: N2.into(),
            at: artifacts::now(),
        };
        assert!(restarted.install(A, &is(N2), Some(&stored), t).is_ok());
        let garbled = Grant {
            nonce: "../../etc".into(),
            at: artifacts::now(),
        };
        assert!(Grants::default()
            .install(A, &|_| true, Some(&garbled), t)
            .is_err());
    }
}
