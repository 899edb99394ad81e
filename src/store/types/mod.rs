//! The store's parameter and view types, by what they are about; `store` re-exports
//! them all.

mod deliveries;
mod jobs;
mod nodes;
mod runs;
mod workflows;

pub use deliveries::*;
pub use jobs::*;
pub use nodes::*;
pub use runs::*;
pub use workflows::*;
