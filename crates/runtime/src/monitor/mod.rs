//! The per-pod monitor process (`server`), its protocol (`proto`), berthd's client of it
//! (`client`) and the CRI log writer it uses (`log`).

pub mod client;
pub mod log;
pub mod proto;
pub mod server;

pub use client::{spawn, wait_gone, MonitorClient};
pub use server::main;
