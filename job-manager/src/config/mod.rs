//! Configuration: the model (plain data + defaults), loading with precedence, validation.
pub mod model;

pub use model::Config;
