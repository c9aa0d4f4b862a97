//! The node bridge and container veth pairs, over rtnetlink.
//!
//! `skiff0` (a Linux bridge) holds the subnet's gateway address. Each
//! bridged container gets a veth pair: the host end (`sk<id>`) on the
//! bridge, the other end, `eth0`, created in the container's network
//! namespace, with its address, the bridge's MTU and a default route via
//! the gateway. What happens inside the container's namespace runs
//! with a netlink socket of its own there ([`super::netns`]).

use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::{AsRawFd, OwnedFd};

use futures::TryStreamExt;
use ipnet::Ipv4Net;
use rtnetlink::packet_route::link::{InfoData, InfoVeth, LinkMessage};
use rtnetlink::{
    Handle, LinkBridge, LinkMessageBuilder, LinkUnspec, LinkVeth, RouteMessageBuilder,
};

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
///
/// The pair is created with its ends where they belong, `host_if` already
/// on the bridge and up: moving an interface to another namespace
/// afterwards waits for RCU grace periods (20-30 ms here).
pub async fn attach(
    handle: &Handle,
    bridge_index: u32,
    host_if: &str,
    netns: &OwnedFd,
    a: Attachment,
) -> Result<(), LinkError> {
    let what = || format!("veth {host_if}");
    let peer = LinkMessageBuilder::<LinkUnspec>::new()
        .name(INSIDE.to_string())
        .mtu(a.mtu)
        .setns_by_fd(netns.as_raw_fd())
        .build();
    handle
        .link()
        .add(
            LinkVeth::new(host_if, INSIDE)
                .mtu(a.mtu)
                .controller(bridge_index)
                .up()
                .set_info_data(InfoData::Veth(InfoVeth::Peer(peer)))
                .build(),
        )
        .execute()
        .await
        .map_err(|e| err(what(), e))?;
    let result = async {
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
        configure_in(ns, a).await
    }
    .await;
    if result.is_err() {
        let _ = detach(handle, host_if).await;
    }
    result
}

/// The container's end of its veth pair.
const INSIDE: &str = "eth0";

/// Inside the container's namespace: `eth0` with its address, up, and the
/// default route.
async fn configure_inside(handle: Handle, a: Attachment) -> Result<(), LinkError> {
    let link = find(&handle, INSIDE)
        .await?
        .ok_or_else(|| err(format!("{INSIDE} in the container"), "missing"))?;
    let index = link.header.index;
    handle
        .address()
        .add(index, IpAddr::V4(a.address), a.prefix_len)
        .execute()
        .await
        .map_err(|e| err(format!("{INSIDE}: address {}", a.address), e))?;
    handle
        .link()
        .set(LinkUnspec::new_with_index(index).up().build())
        .execute()
        .await
        .map_err(|e| err(INSIDE, e))?;
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
async fn configure_in(netns: OwnedFd, a: Attachment) -> Result<(), LinkError> {
    let result = super::netns::run_in(netns, move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        Ok(rt.block_on(async move { configure_inside(connect()?, a).await }))
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

/// The MTU of the uplink (the interface of the IPv4 default route), if
/// there is one.
pub async fn uplink_mtu(handle: &Handle) -> Result<Option<u32>, LinkError> {
    use rtnetlink::packet_route::link::LinkAttribute;
    use rtnetlink::packet_route::route::RouteAttribute;
    let mut routes = handle
        .route()
        .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
        .execute();
    let mut uplink = None;
    while let Some(route) = routes.try_next().await.map_err(|e| err("routes", e))? {
        if route.header.destination_prefix_length != 0 {
            continue;
        }
        uplink = route.attributes.iter().find_map(|a| match a {
            RouteAttribute::Oif(i) => Some(*i),
            _ => None,
        });
        if uplink.is_some() {
            break;
        }
    }
    let Some(index) = uplink else {
        return Ok(None);
    };
    let mut links = handle.link().get().match_index(index).execute();
    let link = links.try_next().await.map_err(|e| err("uplink", e))?;
    Ok(link.and_then(|l| {
        l.attributes.iter().find_map(|a| match a {
            LinkAttribute::Mtu(m) => Some(*m),
            _ => None,
        })
    }))
}

/// The names of the interfaces attached to the bridge `bridge`.
pub async fn veths_on(handle: &Handle, bridge: &str) -> Result<Vec<String>, LinkError> {
    use rtnetlink::packet_route::link::LinkAttribute;
    let Some(b) = find(handle, bridge).await? else {
        return Ok(Vec::new());
    };
    let index = b.header.index;
    let mut links = handle.link().get().execute();
    let mut out = Vec::new();
    while let Some(l) = links
        .try_next()
        .await
        .map_err(|e| err(format!("links of {bridge}"), e))?
    {
        let on_bridge = l
            .attributes
            .iter()
            .any(|a| matches!(a, LinkAttribute::Controller(c) if *c == index));
        let name = l.attributes.iter().find_map(|a| match a {
            LinkAttribute::IfName(n) => Some(n.clone()),
            _ => None,
        });
        if let (true, Some(name)) = (on_bridge, name) {
            out.push(name);
        }
    }
    Ok(out)
}
