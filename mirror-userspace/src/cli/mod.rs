//! Subcommands of the `mirror` binary.
pub mod dump;
pub mod run;
pub mod tap;
