//! Results: the API sidecars call, the durable store of results not yet accepted by
//! the broker, and the delivery loop that retries them.
//!
//! ```text
//! sidecar --POST--> server (result API) --+
//! executor (timeout, crash, rejection) ---+--> ResultIntake --record--> ResultStore
//!                                                  | kick                    ^ pending / mark_delivered
//!                                                  v                         |
//!                                             DeliveryLoop --submit_result--> broker
//! ```
pub mod api;
pub mod delivery;
pub mod file;
pub mod intake;
pub mod memory;
pub mod store;

pub use delivery::{DeliveryLoop, SweepGate};
pub use file::{FileResultStore, StoreSettings};
pub use intake::ResultIntake;
pub use memory::MemoryResultStore;
pub use store::{Recorded, ResultStore, StoreError};
