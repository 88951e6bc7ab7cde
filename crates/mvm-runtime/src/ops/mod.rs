//! The operations, one file each. Every CLI command calls exactly one of
//! them; each takes the [`crate::Runtime`] and typed options, and holds
//! the rules (validation, state checks, environment precedence) so the CLI
//! only parses and prints.

pub mod cp;
pub mod create;
pub mod exec;
pub mod gc;
pub mod list;
pub mod pause;
pub mod recover;
pub mod rm;
pub mod start;
pub mod stop;
pub mod template;
pub mod update;
