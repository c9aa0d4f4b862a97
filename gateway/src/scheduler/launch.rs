//! Capacity not yet launched: VMs already launching, and VMs a cloud site
//! could still launch within its limits. Requests no joined node can take
//! are packed onto these, opening a new VM only when none has room, with
//! the instance type that serves the waiting demand at the lowest price.

use std::collections::{BTreeMap, HashMap};

use skiff_proto::cluster::NodeStatus;

use super::engine::Scheduler;
use super::error::PlanError;
use super::fleet::{Attrs, Res};
use super::model::{Group, InstanceType, Launch, Request, Snapshot, Target};

/// How far ahead type selection looks at waiting requests.
const LOOKAHEAD: usize = 2048;

#[derive(Debug)]
struct CloudSite {
    name: String,
    can_launch: bool,
    max_nodes: Option<u32>,
    nodes: u32,
    budget: Option<u64>,
    spend: u64,
    types: Vec<InstanceType>,
    attrs: Vec<Attrs>,
}

#[derive(Debug)]
struct Vm {
    site: usize,
    ty: usize,
    free: Res,
    ports: Vec<u32>,
    groups: HashMap<usize, u32>,
    target: Target,
}

/// Launching and launchable VMs during a pass.
#[derive(Debug)]
pub(crate) struct Cloud {
    sites: Vec<CloudSite>,
    vms: Vec<Vm>,
    launches: Vec<Launch>,
    /// Namespaces' spend limits, spent down as VMs are opened for them
    /// (and as their replicas take shares of priced nodes).
    pub(super) budgets: Vec<super::model::SpendLimit>,
}

fn type_attrs(site: &super::model::SiteInfo, t: &InstanceType) -> Attrs {
    let mut labels = site.launch_labels.clone();
    labels.insert("instance-type".into(), t.name.clone());
    Attrs {
        site: site.name.clone(),
        arch: t.arch.clone(),
        os: "linux".into(),
        labels,
        // A new VM's agent publishes no host volumes.
        volumes: Default::default(),
    }
}

impl Cloud {
    pub fn new(snap: &Snapshot, site_index: &HashMap<&str, usize>) -> Result<Self, PlanError> {
        let mut sites: Vec<CloudSite> = snap
            .sites
            .iter()
            .map(|s| CloudSite {
                name: s.name.clone(),
                can_launch: s.kind.can_launch(),
                max_nodes: s.max_nodes,
                nodes: 0,
                budget: s.budget,
                spend: 0,
                types: s.instance_types.clone(),
                attrs: s.instance_types.iter().map(|t| type_attrs(s, t)).collect(),
            })
            .collect();
        for n in &snap.nodes {
            if n.status != NodeStatus::Down
                && let Some(&s) = site_index.get(n.site.as_str())
            {
                sites[s].nodes += 1;
                sites[s].spend += n.price;
            }
        }
        let mut vms = Vec::new();
        for vm in &snap.launching {
            let &s = site_index
                .get(vm.site.as_str())
                .ok_or_else(|| PlanError::VmSite {
                    vm: vm.id.clone(),
                    site: vm.site.clone(),
                })?;
            let ty = sites[s]
                .types
                .iter()
                .position(|t| t.name == vm.instance_type)
                .ok_or_else(|| PlanError::VmType {
                    vm: vm.id.clone(),
                    site: vm.site.clone(),
                    instance_type: vm.instance_type.clone(),
                })?;
            sites[s].nodes += 1;
            sites[s].spend += sites[s].types[ty].price;
            vms.push(Vm {
                site: s,
                ty,
                free: sites[s].types[ty].room(),
                ports: Vec::new(),
                groups: HashMap::new(),
                target: Target::Launching(vm.id.clone()),
            });
        }
        Ok(Self {
            sites,
            vms,
            launches: Vec::new(),
            budgets: snap.budgets.clone(),
        })
    }

    /// Reserves part of launching VM `v` for one replica of group `gi`
    /// (waiting for it outside the pass); returns the VM's site.
    pub fn reserve(&mut self, v: usize, gi: usize, demand: &Res, ports: &[u32]) -> usize {
        let vm = &mut self.vms[v];
        vm.free.sub(demand);
        vm.ports.extend_from_slice(ports);
        *vm.groups.entry(gi).or_default() += 1;
        vm.site
    }

    /// The site of a launching or planned VM.
    pub fn vm_site(&self, target: &Target) -> usize {
        self.vms
            .iter()
            .find(|v| &v.target == target)
            .map_or(0, |v| v.site)
    }

    pub fn launches(&self) -> Vec<Launch> {
        self.launches.clone()
    }

    fn room_for_one_more(&self, s: usize, price: u64) -> bool {
        let site = &self.sites[s];
        site.max_nodes.is_none_or(|m| site.nodes < m)
            && site.budget.is_none_or(|b| site.spend + price <= b)
    }

    /// Whether group `g`'s namespace may spend `price` more.
    fn tenant_may_spend(&self, g: &Group, price: u64) -> bool {
        g.budget
            .and_then(|b| self.budgets.get(b))
            .is_none_or(|b| b.spend + price <= b.limit)
    }

    /// Types of site `s` that could take one replica of `g`.
    fn usable_types<'a>(
        &'a self,
        s: usize,
        g: &'a Group,
        demand: &'a Res,
    ) -> impl Iterator<Item = usize> + 'a {
        let site = &self.sites[s];
        (0..site.types.len()).filter(move |&t| {
            !site.types[t].held
                && site.types[t].room().fits(demand)
                && site.attrs[t].satisfies(&g.constraints, None)
                && site.attrs[t].missing_volume(&g.host_volumes).is_none()
        })
    }

    /// Whether site `s` could launch a VM for one replica of `g` at all.
    pub fn could_launch(&self, s: usize, g: &Group, demand: &Res) -> bool {
        self.sites[s].can_launch
            && self.usable_types(s, g, demand).any(|t| {
                let price = self.sites[s].types[t].price;
                self.room_for_one_more(s, price) && self.tenant_may_spend(g, price)
            })
    }

    /// Why site `s` launches nothing for `g`, in words.
    pub fn why_not(&self, s: usize, g: &Group, demand: &Res) -> String {
        let site = &self.sites[s];
        if !site.can_launch {
            return "static site: it only has the nodes that join it".into();
        }
        if site.types.is_empty() {
            return "no instance types configured".into();
        }
        if let Some(v) = g.host_volumes.first() {
            return format!("a new VM publishes no host volume {v}");
        }
        if !site.types.iter().any(|t| t.room().fits(demand)) {
            return format!(
                "no instance type fits {} CPU, {} memory",
                skiff_proto::Cpu::from_millis(demand.cpu.max(0) as u64),
                skiff_proto::ByteSize::from_bytes(demand.mem.max(0) as u64)
            );
        }
        let Some(cheapest) = self
            .usable_types(s, g, demand)
            .map(|t| site.types[t].price)
            .min()
        else {
            if site.types.iter().any(|t| t.held) {
                return "its instance types that fit are set aside after failed launches".into();
            }
            return "no instance type satisfies the constraints".into();
        };
        if let Some(m) = site.max_nodes
            && site.nodes >= m
        {
            return format!("max_nodes {m} reached");
        }
        if let Some(b) = site.budget
            && site.spend + cheapest > b
        {
            return format!(
                "budget {}/h reached ({}/h in use)",
                money(b),
                money(site.spend)
            );
        }
        if let Some(b) = g.budget.and_then(|b| self.budgets.get(b))
            && b.spend + cheapest > b.limit
        {
            return format!(
                "namespace {}'s cloud spend limit {}/h reached ({}/h in use)",
                b.namespace,
                money(b.limit),
                money(b.spend)
            );
        }
        "spread skew keeps replicas elsewhere".into()
    }
}

/// Millionths per hour as a price (`0.096000`).
pub fn money(micros: u64) -> String {
    format!("{}.{:06}", micros / 1_000_000, micros % 1_000_000)
}

impl Scheduler<'_> {
    fn vm_ok(&self, gi: usize, vm: &Vm, demand: &Res) -> bool {
        let g = &self.groups[gi];
        let st = &self.gs[gi];
        vm.free.fits(demand)
            && st.ports.iter().all(|p| !vm.ports.contains(p))
            && (!g.distinct_nodes || !vm.groups.contains_key(&gi))
            && self.cloud.sites[vm.site].attrs[vm.ty].satisfies(&g.constraints, None)
            && self.cloud.sites[vm.site].attrs[vm.ty]
                .missing_volume(&g.host_volumes)
                .is_none()
    }

    /// Places group `gi`'s request on a launching VM, or on a new one.
    /// `waiting` is this request and the ones after it, for type choice.
    pub(crate) fn place_virtual(
        &mut self,
        gi: usize,
        sites: &[usize],
        requests: &[Request],
        waiting: &[usize],
    ) -> Option<Target> {
        let demand = self.gs[gi].demand;
        let mut best: Option<(i64, usize)> = None;
        for &s in sites {
            for (i, vm) in self.cloud.vms.iter().enumerate() {
                if vm.site == s && self.vm_ok(gi, vm, &demand) {
                    let key = vm.free.mem - demand.mem;
                    if best.is_none_or(|(b, _)| key < b) {
                        best = Some((key, i));
                    }
                }
            }
            if best.is_some() {
                break;
            }
        }
        let vm = match best {
            Some((_, i)) => i,
            None => self.open_vm(gi, sites, requests, waiting)?,
        };
        let ports = self.gs[gi].ports.clone();
        let v = &mut self.cloud.vms[vm];
        v.free.sub(&demand);
        v.ports.extend(ports);
        *v.groups.entry(gi).or_default() += 1;
        Some(v.target.clone())
    }

    /// Opens a VM in the first site (in the group's order) that can launch
    /// one, choosing the type with the lowest price per unit of waiting
    /// demand it would hold.
    fn open_vm(
        &mut self,
        gi: usize,
        sites: &[usize],
        requests: &[Request],
        waiting: &[usize],
    ) -> Option<usize> {
        let demand = self.gs[gi].demand;
        let g = &self.groups[gi];
        // Totals normalise cpu and memory into one "value" of demand.
        let window = &waiting[..waiting.len().min(LOOKAHEAD)];
        let (mut tc, mut tm) = (1u128, 1u128);
        for &r in window {
            let d = &self.gs[requests[r].group].demand;
            tc += d.cpu.max(0) as u128;
            tm += d.mem.max(0) as u128;
        }
        for &s in sites {
            let site = &self.cloud.sites[s];
            if !site.can_launch {
                continue;
            }
            let mut best: Option<(u128, u128, u64, usize)> = None; // price, value, tie
            for t in self.cloud.usable_types(s, g, &demand) {
                let ty = &site.types[t];
                if !self.cloud.room_for_one_more(s, ty.price)
                    || !self.cloud.tenant_may_spend(g, ty.price)
                {
                    continue;
                }
                let value = self.fill_value(s, t, requests, window, tc, tm);
                // Lower price per value wins: compare a/b < c/d as a*d < c*b.
                let better = match best {
                    None => true,
                    Some((bp, bv, bprice, _)) => {
                        let lhs = u128::from(ty.price) * bv;
                        let rhs = bp * value;
                        lhs < rhs || (lhs == rhs && ty.price < bprice)
                    }
                };
                if better {
                    best = Some((u128::from(ty.price), value, ty.price, t));
                }
            }
            if let Some((_, _, price, t)) = best {
                if let Some(b) = g.budget.and_then(|b| self.cloud.budgets.get_mut(b)) {
                    b.spend += price;
                }
                let site = &mut self.cloud.sites[s];
                site.nodes += 1;
                site.spend += price;
                self.cloud.launches.push(Launch {
                    site: site.name.clone(),
                    instance_type: site.types[t].name.clone(),
                });
                self.cloud.vms.push(Vm {
                    site: s,
                    ty: t,
                    free: site.types[t].room(),
                    ports: Vec::new(),
                    groups: HashMap::new(),
                    target: Target::NewVm(self.cloud.launches.len() - 1),
                });
                return Some(self.cloud.vms.len() - 1);
            }
        }
        None
    }

    /// How much of the waiting demand one VM of type `t` in site `s` would
    /// hold, packing greedily in order (the first request always counts).
    fn fill_value(
        &self,
        s: usize,
        t: usize,
        requests: &[Request],
        window: &[usize],
        tc: u128,
        tm: u128,
    ) -> u128 {
        const K: u128 = 1 << 40;
        let site = &self.cloud.sites[s];
        let mut free = site.types[t].room();
        let mut used_ports: Vec<u32> = Vec::new();
        let mut distinct: BTreeMap<usize, ()> = BTreeMap::new();
        let mut value = 0u128;
        for &r in window {
            let gi = requests[r].group;
            let g = &self.groups[gi];
            let st = &self.gs[gi];
            if !free.fits(&st.demand)
                || !st.site_order.contains(&s)
                || st.ports.iter().any(|p| used_ports.contains(p))
                || (g.distinct_nodes && distinct.contains_key(&gi))
                || !site.attrs[t].satisfies(&g.constraints, None)
            {
                continue;
            }
            free.sub(&st.demand);
            used_ports.extend(&st.ports);
            distinct.insert(gi, ());
            value += st.demand.cpu.max(0) as u128 * K / tc + st.demand.mem.max(0) as u128 * K / tm;
        }
        value.max(1)
    }
}
