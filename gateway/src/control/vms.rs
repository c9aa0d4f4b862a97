//! The autoscaler's state changes, named: a VM launched is recorded, a VM
//! whose node joined hands its instance to the node, a VM gone is
//! forgotten, a launched node goes through the phases of its scale-in,
//! and a node is emptied (or no longer). Each is one commit.

use super::{Control, ControlError, NodeRecord, Vacate, VmRecord};
use crate::store::Kind;

/// A step of a launched node's scale-in, recorded on it before it is
/// taken (a gateway killed half-way goes on from there).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScaleIn {
    /// Without work since `since_ms`.
    Idle { since_ms: i64 },
    /// Has work (again).
    Busy,
    /// Idle long enough: takes no new work.
    Cordon,
    /// About to be terminated.
    Terminate,
    /// Work landed on it while cordoned: moved away first.
    Drain,
}

impl ScaleIn {
    fn apply(self, n: &mut NodeRecord) {
        match self {
            ScaleIn::Idle { since_ms } => n.idle_since_ms = Some(since_ms),
            ScaleIn::Busy => n.idle_since_ms = None,
            ScaleIn::Cordon => {
                n.scale_in = Some("cordoned".into());
                n.unschedulable = true;
            }
            ScaleIn::Terminate => n.scale_in = Some("terminating".into()),
            ScaleIn::Drain => n.draining = true,
        }
    }
}

impl Control {
    /// A VM launched for pending work (the allocations it is for wait for
    /// it).
    pub fn record_vm(&self, vm: &VmRecord) -> Result<(), ControlError> {
        self.write(|s, b| {
            b.put(Kind::Vm, &vm.id, vm);
            s.vms.insert(vm.id.clone(), vm.clone());
            Ok(())
        })
    }

    /// A VM whose node registered: the node knows its instance from now
    /// on (for scale-in) and the VM record goes, in one commit.
    pub fn vm_joined(&self, vm: &VmRecord) -> Result<(), ControlError> {
        self.write(|s, b| {
            if let Some(n) = s.nodes.get_mut(&vm.node) {
                n.instance_id = Some(vm.id.clone());
                n.instance_type = Some(vm.instance_type.clone());
                b.put(Kind::Node, &vm.node, n);
            }
            s.vms.remove(&vm.id);
            b.delete(Kind::Vm, &vm.id);
            Ok(())
        })
    }

    /// A VM that is gone (terminated, or never to join).
    pub fn forget_vm(&self, id: &str) -> Result<(), ControlError> {
        self.write(|s, b| {
            s.vms.remove(id);
            b.delete(Kind::Vm, id);
            Ok(())
        })
    }

    /// Records a step of `node`'s scale-in (nothing if the node is gone).
    pub fn scale_in_step(&self, node: &str, step: ScaleIn) -> Result<(), ControlError> {
        self.write(|s, b| {
            if let Some(n) = s.nodes.get_mut(node) {
                step.apply(n);
                b.put(Kind::Node, node, n);
            }
            Ok(())
        })
    }

    /// Starts emptying `node` (its replicas start elsewhere, then stop):
    /// whether it did; not when the node is gone, not ready, cordoned,
    /// draining, scaling in or already being emptied (it changed since
    /// the decision).
    pub fn vacate(&self, node: &str, v: Vacate) -> Result<bool, ControlError> {
        self.write(|s, b| {
            let Some(n) = s.nodes.get_mut(node) else {
                return Ok(false);
            };
            if n.status != skiff_proto::cluster::NodeStatus::Ready
                || n.unschedulable
                || n.draining
                || n.scale_in.is_some()
                || n.vacating.is_some()
            {
                return Ok(false);
            }
            n.vacating = Some(v);
            b.put(Kind::Node, node, n);
            Ok(true)
        })
    }

    /// Stops emptying `node`: it takes work again (what moved stays where
    /// it went; a replica whose move found no room stays).
    pub fn stop_vacating(&self, node: &str) -> Result<(), ControlError> {
        self.write(|s, b| {
            if let Some(n) = s.nodes.get_mut(node)
                && n.vacating.take().is_some()
            {
                b.put(Kind::Node, node, n);
            }
            Ok(())
        })
    }
}
