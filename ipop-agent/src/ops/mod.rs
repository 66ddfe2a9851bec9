//! Operating a running agent: its control socket (`ipop-agent status`), its metrics for
//! Prometheus (`metrics`, served by `http` with the topology page), systemd's notifications
//! (`notify`), the locks that keep one agent per bridge and per pin directory, and its state
//! directory (the node's key).

pub mod control;
pub mod http;
pub mod lock;
pub mod metrics;
pub mod notify;
pub mod state;
