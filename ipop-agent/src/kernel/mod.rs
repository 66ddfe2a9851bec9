//! What touches the kernel: the eBPF programs and their pinned maps (`datapath`; `tables`
//! for the agent's neighbour tables, `maps` for the CLI's view of a running agent's), the TAP (`tap`), the bridge over rtnetlink
//! (`netif`), and the checks before anything is created (`preflight`).

pub mod datapath;
pub mod maps;
pub mod netif;
pub mod preflight;
pub mod tables;
pub mod tap;
