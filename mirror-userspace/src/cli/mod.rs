//! Subcommands of the `mirror` binary.
pub mod run;
pub mod tap;
