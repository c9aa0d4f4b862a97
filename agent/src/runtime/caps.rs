//! Capabilities: the usual container default set, changed only by explicit
//! `--cap-add`/`--cap-drop` or `--privileged`.

use caps::{CapSet, Capability, CapsHashSet};

use super::init::InitError;
use super::spec::Security;

/// Docker's and runc's default set.
pub const DEFAULT: &[Capability] = &[
    Capability::CAP_CHOWN,
    Capability::CAP_DAC_OVERRIDE,
    Capability::CAP_FSETID,
    Capability::CAP_FOWNER,
    Capability::CAP_MKNOD,
    Capability::CAP_NET_RAW,
    Capability::CAP_SETGID,
    Capability::CAP_SETUID,
    Capability::CAP_SETFCAP,
    Capability::CAP_SETPCAP,
    Capability::CAP_NET_BIND_SERVICE,
    Capability::CAP_SYS_CHROOT,
    Capability::CAP_KILL,
    Capability::CAP_AUDIT_WRITE,
];

/// Parses `NET_ADMIN` or `CAP_NET_ADMIN` (any case).
pub fn parse(name: &str) -> Option<Capability> {
    let upper = name.to_ascii_uppercase();
    let full = if upper.starts_with("CAP_") {
        upper
    } else {
        format!("CAP_{upper}")
    };
    full.parse().ok()
}

fn err(what: &str, e: impl std::fmt::Display) -> InitError {
    InitError(format!("{what}: {e}"))
}

/// The capabilities the container keeps.
pub fn effective_set(sec: &Security) -> Result<CapsHashSet, InitError> {
    // Everything the agent itself holds: a container cannot get more.
    let supported = || {
        caps::read(None, CapSet::Permitted)
            .unwrap_or_else(|_| caps::runtime::thread_all_supported())
    };
    if sec.privileged {
        return Ok(supported());
    }
    let mut set: CapsHashSet = DEFAULT.iter().copied().collect();
    for name in &sec.cap_drop {
        if name.eq_ignore_ascii_case("ALL") {
            set.clear();
        } else {
            set.remove(
                &parse(name)
                    .ok_or_else(|| err("cap_drop", format!("unknown capability {name}")))?,
            );
        }
    }
    for name in &sec.cap_add {
        if name.eq_ignore_ascii_case("ALL") {
            set = supported();
        } else {
            set.insert(
                parse(name).ok_or_else(|| err("cap_add", format!("unknown capability {name}")))?,
            );
        }
    }
    Ok(set)
}

/// Removes everything else from the bounding set (needs CAP_SETPCAP, so
/// before any other capability is dropped).
pub fn drop_bounding(keep: &CapsHashSet) -> Result<(), InitError> {
    for cap in caps::all() {
        if !keep.contains(&cap) {
            // Capabilities the running kernel does not know cannot be held.
            let _ = caps::drop(None, CapSet::Bounding, cap);
        }
    }
    Ok(())
}

/// Keeps permitted capabilities when switching to a non-root user, so the
/// set can then be applied exactly.
pub fn keep_caps_across_setuid() -> Result<(), InitError> {
    nix::sys::prctl::set_keepcaps(true).map_err(|e| err("keep capabilities", e))
}

/// Applies the set. Root keeps it effective; other users, as in Docker,
/// start with no effective capabilities (but may not regain more).
pub fn apply(keep: &CapsHashSet, uid: u32) -> Result<(), InitError> {
    let empty = CapsHashSet::new();
    let effective = if uid == 0 { keep } else { &empty };
    caps::set(None, CapSet::Ambient, &empty).map_err(|e| err("ambient capabilities", e))?;
    caps::set(None, CapSet::Inheritable, &empty).map_err(|e| err("inheritable capabilities", e))?;
    caps::set(None, CapSet::Effective, effective).map_err(|e| err("effective capabilities", e))?;
    caps::set(None, CapSet::Permitted, effective).map_err(|e| err("permitted capabilities", e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_add_and_drop() {
        let base = effective_set(&Security::default()).unwrap();
        assert_eq!(base.len(), DEFAULT.len());
        assert!(!base.contains(&Capability::CAP_SYS_ADMIN));
        let sec = Security {
            cap_add: vec!["net_admin".into()],
            cap_drop: vec!["CAP_CHOWN".into()],
            ..Default::default()
        };
        let set = effective_set(&sec).unwrap();
        assert!(set.contains(&Capability::CAP_NET_ADMIN));
        assert!(!set.contains(&Capability::CAP_CHOWN));
        let none = effective_set(&Security {
            cap_drop: vec!["ALL".into()],
            ..Default::default()
        })
        .unwrap();
        assert!(none.is_empty());
        let bad = effective_set(&Security {
            cap_add: vec!["FLY".into()],
            ..Default::default()
        });
        assert_eq!(bad.unwrap_err().0, "cap_add: unknown capability FLY");
    }
}
