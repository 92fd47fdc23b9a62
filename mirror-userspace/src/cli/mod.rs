//! Subcommands of the `mirror` binary.
pub mod tap;
