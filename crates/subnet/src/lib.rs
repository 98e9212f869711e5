//! Network config, leases and stores.
