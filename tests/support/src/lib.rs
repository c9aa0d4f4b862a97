//! Test support shared by Skiff's integration and end-to-end tests.
//!
//! * [`procs`]: helper processes that are always stopped, by pid, when the
//!   guard drops (also when a test panics).
//! * [`registry`]: Debian's `docker-registry` on a free loopback port, with
//!   optional htpasswd basic auth, or over TLS with a CA of its own.
//! * [`layout`]: OCI layouts written by hand from raw tar layers (any
//!   content, hostile names included; multi-platform indexes).
//! * [`net`]: free loopback ports; a test's own bridge, subnet and
//!   nftables table ([`net::NetSlot`]).
//! * [`netns`]: network namespaces as other hosts, HTTP servers and
//!   clients in them.
//! * [`images`]: small OCI images built from `busybox-static` with `umoci`,
//!   as an OCI layout, an `oci-archive` and a `docker-archive`, pushed to a
//!   registry with `skopeo`.
//! * [`bench`]: what benchmarks share (jobs per second over threads).
//! * [`corpus`]: images as people have them, made by `umoci insert`,
//!   `buildah`, `mmdebstrap` and GNU tar.
//!
//! Everything a test starts lives in a temporary directory that is removed
//! on drop. The tools come from Debian packages that `scripts/test`
//! installs; [`tools::require`] fails with that hint when one is missing.

pub mod bench;
pub mod corpus;
pub mod images;
pub mod layout;
pub mod net;
pub mod netns;
pub mod procs;
pub mod registry;
pub mod tools;
