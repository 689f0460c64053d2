//! Test support shared by the workspace-level tests: the store contract
//! suite (run against every backend) and a harness that runs the real
//! `byok-local` binary.

pub mod aws;
pub mod clients;
pub mod contract;
pub mod harness;
pub mod http;
pub mod lambda_runtime;
pub mod release_fixture;
pub mod stores;
pub mod upstream;
