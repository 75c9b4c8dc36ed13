//! Netlink: the pure codec ([`codec`], [`nbd`]) and the socket seam ([`socket`]).

pub mod codec;
pub mod nbd;
pub mod socket;

pub use socket::{Netlink, NetlinkError, NlSocket};
