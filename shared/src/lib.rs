//! `byok`: the library every function of the BYOK gateway shares.
//!
//! Users store their own provider keys (or a Vercel AI Gateway key); the
//! gateway keeps them encrypted, decides per request whose key pays, and
//! serves the same routes as AWS Lambda functions or from one local process
//! (`byok-local`).
//!
//! # Layout, in layer order
//! A module uses only modules of its own layer or the layers above it in
//! this list, never one that uses it back (`tests/tests/layers.rs` checks
//! that no top-level module reaches itself through others).
//!
//! **Domain** (no I/O):
//! - [`domain`]: services, credentials (secret types), key records, settings,
//!   model ids, user base URLs, resolution paths, the operator's team keys
//!   and upstream base URLs.
//! - [`crypto`]: the master key and authenticated encryption of secrets.
//!
//! **Stores, providers and the outgoing side**:
//! - [`store`]: storage traits and backends ([`store::embedded`]: SQLite
//!   files with AES-256-GCM sealed secrets; [`store::dynamo`] and
//!   [`store::secrets_manager`] on AWS).
//! - [`providers`]: upstream wire adapters (OpenAI-compatible pass-through,
//!   Anthropic Messages translation).
//! - [`upstream`]: HTTP clients and their timeouts, the public-address rule
//!   for user base URLs, request building, upstream errors and redaction.
//! - [`events`]: key and budget events to EventBridge, a file, the log, and
//!   the operator's signed alert webhook.
//! - [`auth`]: verifying bearer tokens (HS256) or trusting API Gateway
//!   authorizer claims; the caller's [`auth::Principal`].
//! - [`telemetry`]: tracing setup.
//!
//! **Configuration**:
//! - [`resolve`]: the resolution contract (user gateway → user provider →
//!   team gateway → team provider), pure over one [`store::UserSnapshot`].
//! - [`config`]: configuration, read once from the environment.
//!
//! **Services** (no HTTP types):
//! - [`audit`]: the audit log as the services use it (writes never fail an
//!   operation; pages are checked before the store is asked).
//! - [`keys`]: key management and settings: the operations behind the keys and
//!   settings routes, over the store traits.
//! - [`catalog`]: the shipped model catalog (context windows, prices) and
//!   per-user accessibility for `/v1/models`.
//! - [`budget`]: budgets on the team path: reserve a request's worst case
//!   before the upstream call, settle to its real usage, alerts once per
//!   threshold and period, the admin's and the user's budget views.
//! - [`completion`]: chat completions: resolution, fallback, the upstream
//!   call, streaming relay, usage metering, request limits, budget holds.
//! - [`usage`]: the usage ledger (completion records priced and written to
//!   the store) and the usage reports of `/api/usage` and `/api/admin/usage`.
//! - [`rotation`]: staged keys, the rotation steps and the key-health sweep,
//!   over a narrow [`rotation::KeyChecker`].
//! - [`tokens`]: personal API keys for tools: made, listed, revoked, and
//!   the one read that authenticates a request presenting one.
//! - [`validate`]: checking keys against their providers, under a per-user
//!   rate limit, with the outcome on the key's metadata and in the audit log.
//!
//! **HTTP and binaries**:
//! - [`http`]: axum routers per capability, the auth extractor, and
//!   [`http::ApiError`], the one mapping of errors to HTTP.
//! - [`app`]: the composition root shared by every binary: config → stores → state.
//! - [`local`]: the `byok-local` command line (serve, token, …).
//! - `lambda` (feature `lambda`): running routers as Lambda functions.
//! - `fuzz` (tests only): property tests over every reader of untrusted
//!   input.

pub mod app;
pub mod audit;
pub mod auth;
pub mod budget;
pub mod catalog;
pub mod completion;
pub mod config;
pub mod crypto;
pub mod domain;
pub mod events;
#[cfg(test)]
mod fuzz;
pub mod http;
pub mod keys;
#[cfg(feature = "lambda")]
pub mod lambda;
#[cfg(feature = "local")]
pub mod local;
pub mod providers;
pub mod resolve;
pub mod rotation;
pub mod store;
pub mod telemetry;
pub mod tokens;
pub mod upstream;
pub mod usage;
pub mod validate;
