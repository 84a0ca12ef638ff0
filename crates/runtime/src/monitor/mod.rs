//! The per-pod monitor process (`server`), its protocol (`proto`), berthd's client of it
//! (`client`), the CRI log writer it uses (`log`), its runner of OCI runtimes (`oci`) and the
//! pod init of a pod whose user namespace owns its PID namespace (`pod_init`).

pub mod client;
pub mod log;
pub mod oci;
mod pod_init;
pub mod proto;
pub mod server;

pub use client::{spawn, wait_gone, MonitorClient};
pub use server::main;
