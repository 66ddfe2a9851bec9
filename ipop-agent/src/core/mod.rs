//! The sans-IO core: decisions and tables, no sockets, clocks, files or maps. The switch
//! (`switch`) and what it decides with: rate limits (`limit`), the JSON-RPC codec (`rpc`),
//! addresses and node ids (`addr`, `node_id`), and the wire views the links use: datagrams
//! (`wire`), chunks of frames (`chunk`), the virtio header (`vnet`), the replay window
//! (`replay`), hex and HMAC (`digest`); the overlay as the topology page draws it (`topology`). Nothing here imports from the rest of the agent.

pub mod addr;
pub mod chunk;
pub mod digest;
pub mod limit;
pub mod node_id;
pub mod replay;
pub mod rpc;
pub mod switch;
pub mod topology;
pub mod turn_frame;
pub mod vnet;
pub mod wire;
