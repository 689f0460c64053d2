//! `byok`: the library every function of the BYOK gateway shares.
//!
//! Users store their own provider keys (or a Vercel AI Gateway key); the
//! gateway keeps them encrypted, decides per request whose key pays, and
//! serves the same routes as AWS Lambda functions or from one local process
//! (`byok-local`).
//!
//! # Layout
//! - [`domain`]: services, credentials (secret types), key records, settings,
//!   model ids, user base URLs. No I/O.
//! - [`resolve`]: the resolution contract (user gateway → user provider →
//!   team gateway → team provider), pure over one [`store::UserSnapshot`].
//! - [`validate`]: checking keys against their providers, under a per-user
//!   rate limit, with the outcome on the key's metadata and in the audit log.
//! - [`audit`]: the audit log as the services use it (writes never fail an
//!   operation; pages are checked before the store is asked).
//! - [`usage`]: the usage ledger (completion records priced and written to
//!   the store) and the usage reports of `/api/usage` and `/api/admin/usage`.
//! - [`budget`]: budgets on the team path: reserve a request's worst case
//!   before the upstream call, settle to its real usage, alerts once per
//!   threshold and period, the admin's and the user's budget views.
//! - [`events`]: key and budget events to EventBridge, a file, the log, and
//!   the operator's signed alert webhook.
//! - [`keys`]: key management and settings: the operations behind the keys and
//!   settings routes, over the store traits.
//! - [`store`]: storage traits and backends ([`store::embedded`]: SQLite file
//!   with AES-256-GCM sealed secrets).
//! - [`providers`]: upstream adapters (OpenAI-compatible pass-through,
//!   Anthropic Messages translation).
//! - [`catalog`]: the shipped model catalog (context windows, prices) and
//!   per-user accessibility for `/v1/models`.
//! - [`crypto`]: the master key and authenticated encryption of secrets.
//! - [`auth`]: verifying bearer tokens (HS256) or trusting API Gateway
//!   authorizer claims; the caller's [`auth::Principal`].
//! - [`http`]: axum routers per capability, the auth extractor, and
//!   [`http::ApiError`], the one mapping of errors to HTTP.
//! - [`config`]: configuration, read once from the environment.
//! - [`app`]: the composition root shared by every binary: config → stores → state.
//! - [`local`]: the `byok-local` command line (serve, token).
//! - [`telemetry`]: tracing setup.
//! - `lambda` (feature `lambda`): running routers as Lambda functions.

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
pub mod http;
pub mod keys;
#[cfg(feature = "lambda")]
pub mod lambda;
pub mod local;
pub mod providers;
pub mod resolve;
pub mod rotation;
pub mod store;
pub mod telemetry;
pub mod usage;
pub mod validate;
