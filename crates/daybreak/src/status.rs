//! What an operator reads: the status page (`/`, static; it polls the API) and
//! `/api/machines` (every machine; `/api/machines/MAC`, one with its timeline). Whatever knows
//! the machines (the fleet) is a [`Machines`]; the router serves it.

use pxe::Mac;

/// The machines as JSON; `/api/machines/MAC` one with its timeline.
pub const MACHINES: &str = "/api/machines";

/// The status page: static, it reads `/api/machines` every second.
pub const PAGE: &str = include_str!("status.html");

/// The machines a server knows, as the API shows them (never their URLs).
pub trait Machines: Send + Sync {
    /// Every machine, as the JSON of `/api/machines`.
    fn list_json(&self) -> Vec<u8>;
    /// One machine with its timeline; `None` when it is not known.
    fn show_json(&self, mac: Mac) -> Option<Vec<u8>>;
}
