//! The per-pod monitor process (`server`), its protocol (`proto`), berthd's client of it
//! (`client`), the CRI log writer it uses (`log`) and its runner of OCI runtimes (`oci`).

pub mod client;
pub mod log;
pub mod oci;
pub mod proto;
pub mod server;
#[cfg(test)]
mod stream_tests;

pub use client::{spawn, wait_gone, MonitorClient};
pub use server::main;
