//! The scripted API runtime: a user's JavaScript check in a QuickJS sandbox.
//!
//! - [`engine`]: the sandbox (globals, limits, event loop, error reports);
//! - [`http`]: `$http`'s client, always through the sidecar's proxy;
//! - [`log`]: the bounded console and `$secure` redaction;
//! - [`contract`]: the runtime contract (`common/CONTRACTS.md`): job in, result out,
//!   ephemeral or persistent (`--serve`);
//! - [`payload`]: the job payload this runtime reads and the result it reports.
//!
//! The engine knows nothing of jobs or sockets, so another runtime (the browser runtime)
//! can embed it with its own globals and its own [`http::HttpPort`].

pub mod contract;
pub mod engine;
pub mod http;
pub mod log;
pub mod payload;
