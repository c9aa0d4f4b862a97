//! The autoscaler's state changes, named: a VM launched is recorded, a VM
//! whose node joined hands its instance to the node, a VM gone is
//! forgotten, and a launched node goes through the phases of its
//! scale-in. Each is one commit.

use super::{Control, ControlError, NodeRecord, VmRecord};
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
}
