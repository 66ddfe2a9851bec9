//! Operating a running agent: its control socket (`ipop-agent status`) and the locks that
//! keep one agent per bridge and per pin directory.

pub mod control;
pub mod lock;
