//! Daybreak, the network-boot server, as a library: the boot plan and the deciders behind one
//! seam ([`decision::Booter`]: the plan, the fleet, pixiecore's API mode), the renderers and the
//! one router in front of them, the machine store and the timelines, and the servers' wiring
//! ([`serve::run`]). The protocol crates (`pxe`, `tftp`, `http`, `udp`) and `artifacts` do the
//! rest; [`cli`] is the `daybreak` command over all of it.

pub mod admin;
pub mod api;
pub mod bounded;
pub mod cli;
pub mod decision;
pub mod events;
pub mod fleet;
pub mod identity;
pub mod ipxe;
pub mod ipxe_iso;
pub mod ipxe_says;
pub mod kernel;
pub mod live;
pub mod loaders;
pub mod metrics;
pub mod pixiecore;
pub mod plan;
pub mod render;
pub mod report_initrd;
pub mod routes;
pub mod serve;
pub mod shared_builds;
pub mod sockets;
pub mod sources;
pub mod store;
pub mod template;
pub mod timeline;
pub mod tokens;
