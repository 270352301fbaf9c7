//! A read-only TFTP server for network boot (RFC 1350, with options: RFC 2347 negotiation, 2348
//! blksize, 2349 timeout and tsize, 7440 windowsize).
//!
//! TFTP carries one thing in Daybreak: the iPXE binary that PXE firmware chainloads. Everything
//! after that goes over HTTP. So the server only reads, only from files handed to it in memory,
//! and only in octet mode.
//!
//! [`transfer::Transfer`] is the whole protocol as a pure state machine: bytes and the time in,
//! bytes to send and a deadline out. [`endpoint::Endpoint`] routes what reaches port 69 (start,
//! refuse, ignore) within a budget of transfers and requests per address. [`server`] is the tokio
//! driver: one socket on port 69 for requests, one connected socket per transfer, as the RFC asks.
//!
//! Real firmware shapes this code. UEFI asks for `tsize`, `blksize` and `windowsize`, reads the
//! size from the OACK, sends ERROR 8 and asks again; that error must end the transfer quietly, not
//! start retransmissions.

#![warn(unreachable_pub)]

pub mod endpoint;
pub mod packet;
pub mod server;
pub mod transfer;

pub use endpoint::Budget;
pub use server::{log_report, run, Files, Known, Listener, Outcome, Report, Reports, Stats};
pub use transfer::{Limits, Status, Transfer};
