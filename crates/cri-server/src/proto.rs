//! The CRI v1 API generated from `proto/runtime/v1/api.proto`.

#![allow(clippy::all, clippy::pedantic, missing_docs)]

tonic::include_proto!("runtime.v1");
