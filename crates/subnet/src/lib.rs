//! Network config, subnet leases and the lease stores.
//!
//! - [`config`]: the network config JSON, defaults and validation.
//! - [`lease`]: subnet keys, lease attributes and leases, in upstream's wire format.
//! - [`alloc`]: choosing this node's subnet (pure functions).
//! - [`registry`]: the store interface; [`etcd`] implements it on etcd v3, [`local`] in a
//!   directory shared by the daemons of one machine.
//! - [`manager`]: acquiring, renewing and watching this node's lease.
//! - [`peers`]: the full, always-current set of peer leases.
//! - [`source`]: the daemon's one seam to a lease source ([`SubnetManager`]): the stores above, or Kubernetes.

pub mod alloc;
pub mod backend_data;
pub mod backoff;
pub mod config;
pub mod etcd;
mod gojson;
pub mod kube;
pub mod lease;
pub mod local;
pub mod manager;
pub mod peers;
pub mod registry;
pub mod source;

pub use alloc::{AllocError, Plan};
pub use backend_data::BackendData;
pub use backoff::Backoff;
pub use config::{ConfigError, NetworkConfig, Pool4, Pool6, DEFAULT_BACKEND_TYPE};
pub use etcd::{EtcdOptions, EtcdRegistry};
pub use lease::{Expiration, Lease, LeaseAttrs, LeaseError, SubnetKey, NO_IPV4_SUBNET};
pub use local::{LocalOptions, LocalRegistry};
pub use manager::{load_config, LeaseEnd, LeaseManager, ManagerError, ManagerOptions};
pub use peers::{PeerSnapshot, PeerWatchOptions, PeerWatcher};
pub use registry::{Event, Registry, RegistryError, SharedRegistry, WatchBatch, WatchStream};
pub use source::{SharedSubnetManager, StoreSource, Stored, SubnetManager};
