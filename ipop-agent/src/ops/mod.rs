//! Operating a running agent: its control socket (`ipop-agent status`), the locks that keep
//! one agent per bridge and per pin directory, and its state directory (the node's key).

pub mod control;
pub mod lock;
pub mod state;
