//! The wire: every JSON shape that crosses a process or network boundary of script-runner —
//! the job API's answers, the errors, and the step protocol between a workflow process and
//! the server — defined once, as serde types.
//!
//! With the feature `openapi` (the server's) the types also derive their OpenAPI schemas
//! (`utoipa::ToSchema`); a few schema-only enums spell what the types keep as text (statuses,
//! modes). Clients leave the feature off and never compile utoipa.
//!
//! The server serialises them, the step client and the blocks deserialise them; this crate
//! depends on serde alone (utoipa only with the feature `openapi`), so a client never compiles
//! the server. Field names and order are those of the Node.js script-runner where it has them
//! (its clients read them unchanged).

pub mod error;
pub mod events;
pub mod jobs;
pub mod runs;
pub mod service;
pub mod steps;

pub use error::{ErrorBody, ErrorDetail};
