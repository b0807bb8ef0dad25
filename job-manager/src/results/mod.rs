//! Results: the API sidecars call, the durable store of results not yet accepted by
//! the broker, and the delivery loop that retries them.
pub mod store;

pub use store::{Recorded, ResultStore, StoreError};
