//! gpumux-common: what the shim and the daemon must agree on.
//!
//! - [`size`]: byte sizes as operators write them (`"10GiB"`).
//! - [`names`]: tenant names and the paths derived from them.
//! - [`nvml`]: the node's GPUs and their health, from NVML through `dlopen`.
//! - [`config`]: the daemon config file and the per-tenant quota files, strictly validated.
//! - [`protocol`]: the messages on a tenant's socket.
//! - [`shm`]: the layout of the two shared segments a tenant's processes map.
//! - [`shm_mutex`]: the process-shared robust mutex that guards a tenant's accounting.
//! - [`futex`]: cross-process futex wait/wake on shared words.
//! - [`sock`]: seqpacket sockets with descriptor passing and peer credentials.
//! - [`cuda_abi`]: the CUDA driver ABI types and structs the shim and the fake driver share.
//! - [`nvml_abi`]: NVML's per-process list entries the shim filters and the fake NVML fills.
//! - [`accounting`]: the reservation logic on a mapped accounting segment (charge/uncharge),
//!   used by the shim on every allocation and by the daemon to reclaim a dead process.

pub mod accounting;
pub mod config;
pub mod cuda_abi;
pub mod futex;
pub mod names;
pub mod nvml;
pub mod nvml_abi;
pub mod protocol;
pub mod shm;
pub mod shm_mutex;
pub mod size;
pub mod sock;

/// Environment variable naming the tenant socket a shimmed process registers with.
pub const ENV_SOCKET: &str = "GPUMUX_SOCKET";
/// Where packages install the shim.
pub const SHIM_INSTALL_PATH: &str = "/usr/lib/gpumux/libgpumux.so";
