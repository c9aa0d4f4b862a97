//! The node bridge and container veth pairs, over rtnetlink.
//!
//! `skiff0` (a Linux bridge) holds the subnet's gateway address. Each
//! bridged container gets a veth pair: the host end (`sk<id>`) on the
//! bridge, the other end moved into the container's network namespace and
//! named `eth0`, with its address, the bridge's MTU and a default route
//! via the gateway. What happens inside the container's namespace runs
//! with a netlink socket of its own there ([`super::netns`]).

use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::{AsRawFd, OwnedFd};

use futures::TryStreamExt;
use ipnet::Ipv4Net;
use rtnetlink::packet_route::link::LinkMessage;
use rtnetlink::{Handle, LinkBridge, LinkUnspec, LinkVeth, RouteMessageBuilder};

/// Errors name the interface or namespace and the netlink failure.
#[derive(Debug, thiserror::Error)]
#[error("{what}: {source}")]
pub struct LinkError {
    pub what: String,
    #[source]
    pub source: std::io::Error,
}

fn err(what: impl Into<String>, e: impl std::fmt::Display) -> LinkError {
    LinkError {
        what: what.into(),
        source: std::io::Error::other(e.to_string()),
    }
}

/// A netlink connection in the calling thread's network namespace.
pub fn connect() -> Result<Handle, LinkError> {
    let (conn, handle, _) = rtnetlink::new_connection().map_err(|e| err("netlink", e))?;
    tokio::spawn(conn);
    Ok(handle)
}

/// The link called `name`, if there is one.
pub async fn find(handle: &Handle, name: &str) -> Result<Option<LinkMessage>, LinkError> {
    let mut links = handle.link().get().match_name(name.to_string()).execute();
    match links.try_next().await {
        Ok(link) => Ok(link),
        // ENODEV: no such link.
        Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ENODEV => Ok(None),
        Err(e) => Err(err(format!("link {name}"), e)),
    }
}

/// Makes sure the bridge `name` exists, is up, and holds the subnet's
/// gateway address; returns its index.
pub async fn ensure_bridge(
    handle: &Handle,
    name: &str,
    gateway: Ipv4Addr,
    subnet: Ipv4Net,
    mtu: u32,
) -> Result<u32, LinkError> {
    let what = || format!("bridge {name}");
    if find(handle, name).await?.is_none() {
        handle
            .link()
            .add(LinkBridge::new(name).mtu(mtu).build())
            .execute()
            .await
            .map_err(|e| err(what(), e))?;
    }
    let link = find(handle, name)
        .await?
        .ok_or_else(|| err(what(), "not there after creating it"))?;
    let index = link.header.index;
    match handle
        .address()
        .add(index, IpAddr::V4(gateway), subnet.prefix_len())
        .execute()
        .await
    {
        Ok(()) => {}
        Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::EEXIST => {}
        Err(e) => return Err(err(format!("{}: address {gateway}", what()), e)),
    }
    handle
        .link()
        .set(LinkUnspec::new_with_index(index).up().build())
        .execute()
        .await
        .map_err(|e| err(what(), e))?;
    Ok(index)
}

/// What a container's interface gets.
#[derive(Debug, Clone, Copy)]
pub struct Attachment {
    pub address: Ipv4Addr,
    pub prefix_len: u8,
    pub gateway: Ipv4Addr,
    pub mtu: u32,
}

/// Connects the network namespace `netns` to the bridge: a veth pair with
/// `host_if` on the bridge and `eth0` inside, addressed and routed.
pub async fn attach(
    handle: &Handle,
    bridge_index: u32,
    host_if: &str,
    netns: &OwnedFd,
    a: Attachment,
) -> Result<(), LinkError> {
    let peer = format!("{host_if}p");
    let what = || format!("veth {host_if}");
    handle
        .link()
        .add(LinkVeth::new(host_if, &peer).mtu(a.mtu).build())
        .execute()
        .await
        .map_err(|e| err(what(), e))?;
    let result = async {
        handle
            .link()
            .set(
                LinkUnspec::new_with_name(&peer)
                    .setns_by_fd(netns.as_raw_fd())
                    .build(),
            )
            .execute()
            .await
            .map_err(|e| err(format!("{}: into the container", what()), e))?;
        handle
            .link()
            .set(
                LinkUnspec::new_with_name(host_if)
                    .controller(bridge_index)
                    .up()
                    .build(),
            )
            .execute()
            .await
            .map_err(|e| err(what(), e))?;
        // Hairpin: a container may reach itself through a published port.
        let port = find(handle, host_if)
            .await?
            .ok_or_else(|| err(what(), "missing"))?;
        handle
            .link()
            .set_port(
                rtnetlink::LinkBridgePort::new(port.header.index)
                    .hairpin(true)
                    .build(),
            )
            .execute()
            .await
            .map_err(|e| err(format!("{}: hairpin", what()), e))?;
        let ns = netns.try_clone().map_err(|e| err("netns", e))?;
        configure_in(ns, peer, a).await
    }
    .await;
    if result.is_err() {
        let _ = detach(handle, host_if).await;
    }
    result
}

/// Inside the container's namespace: `eth0` with its address, up, and the
/// default route.
async fn configure_inside(handle: Handle, peer: String, a: Attachment) -> Result<(), LinkError> {
    let link = find(&handle, &peer)
        .await?
        .ok_or_else(|| err(format!("{peer} in the container"), "missing"))?;
    let index = link.header.index;
    handle
        .link()
        .set(
            LinkUnspec::new_with_index(index)
                .name("eth0".to_string())
                .build(),
        )
        .execute()
        .await
        .map_err(|e| err("eth0", e))?;
    handle
        .address()
        .add(index, IpAddr::V4(a.address), a.prefix_len)
        .execute()
        .await
        .map_err(|e| err(format!("eth0: address {}", a.address), e))?;
    handle
        .link()
        .set(LinkUnspec::new_with_index(index).up().build())
        .execute()
        .await
        .map_err(|e| err("eth0", e))?;
    handle
        .route()
        .add(
            RouteMessageBuilder::<Ipv4Addr>::new()
                .gateway(a.gateway)
                .output_interface(index)
                .build(),
        )
        .execute()
        .await
        .map_err(|e| err(format!("default route via {}", a.gateway), e))
}

/// Inside the network namespace `netns`, with a netlink connection there.
async fn configure_in(netns: OwnedFd, peer: String, a: Attachment) -> Result<(), LinkError> {
    let result = super::netns::run_in(netns, move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        Ok(rt.block_on(async move { configure_inside(connect()?, peer, a).await }))
    })
    .await;
    result.map_err(|e| err("enter the container's network namespace", e))?
}

/// Removes the veth pair whose host end is `host_if` (both ends go);
/// nothing to do when it is not there.
pub async fn detach(handle: &Handle, host_if: &str) -> Result<(), LinkError> {
    if let Some(link) = find(handle, host_if).await? {
        handle
            .link()
            .del(link.header.index)
            .execute()
            .await
            .map_err(|e| err(format!("veth {host_if}"), e))?;
    }
    Ok(())
}
