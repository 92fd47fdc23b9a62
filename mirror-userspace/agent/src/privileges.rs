//! The capabilities the live agent needs, checked before anything is attached (an error
//! names the missing one), and every other one given up once the tap is attached: from then
//! on the agent attaches, detaches and rewrites maps, and nothing else privileged.
//!
//! Written here rather than with a crate: two syscalls (`capget`/`capset`) and one prctl,
//! over a 64-bit mask.
use std::io;

use anyhow::{bail, Result};

/// A capability the agent keeps, and why.
pub struct Needed {
    pub name: &'static str,
    bit: u32,
    pub why: &'static str,
}

/// What the agent needs for its whole life (following pods and reloads attach later too).
pub const NEEDED: [Needed; 3] = [
    Needed { name: "CAP_BPF", bit: 39, why: "load the programs and create the maps" },
    Needed {
        name: "CAP_NET_ADMIN",
        bit: 12,
        why: "attach the programs to interfaces and mark the agent's own sockets",
    },
    Needed { name: "CAP_PERFMON", bit: 38, why: "the programs' reads of packet data" },
];

/// CAP_SETPCAP: to shrink the bounding set.
const SETPCAP: u32 = 8;
const LAST_CAP: u32 = 40;

#[repr(C)]
struct Header {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct Data {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

const VERSION_3: u32 = 0x2008_0522;

fn capget() -> io::Result<[Data; 2]> {
    let mut header = Header { version: VERSION_3, pid: 0 };
    let mut data = [Data::default(); 2];
    // SAFETY: a v3 header and two data structs, as capget(2) wants.
    let rc = unsafe { libc::syscall(libc::SYS_capget, &mut header, data.as_mut_ptr()) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(data)
}

fn has(data: &[Data; 2], bit: u32) -> bool {
    data[(bit / 32) as usize].effective & (1 << (bit % 32)) != 0
}

/// Fails, naming the first missing capability and what it is for, unless the process has
/// every one of [`NEEDED`].
pub fn check() -> Result<()> {
    let data = capget()?;
    for n in &NEEDED {
        if !has(&data, n.bit) {
            bail!(
                "missing capability {} (to {}): run as root, or add it (DaemonSet: \
                 securityContext.capabilities.add)",
                n.name,
                n.why
            );
        }
    }
    Ok(())
}

/// Gives up every capability but [`NEEDED`], for good: the bounding set too, so no exec
/// gets them back. Where the kernel refuses (no CAP_SETPCAP for the bounding set), what
/// could be dropped is, and the rest is said in the error.
pub fn drop_others() -> Result<()> {
    let keep: u64 = NEEDED.iter().fold(0, |mask, n| mask | (1 << n.bit));
    let data = capget()?;
    let mut bounding_kept = false;
    if has(&data, SETPCAP) {
        for bit in (0..=LAST_CAP).filter(|b| keep & (1 << b) == 0) {
            // SAFETY: prctl with an integer argument.
            if unsafe { libc::prctl(libc::PR_CAPBSET_DROP, bit as libc::c_ulong, 0, 0, 0) } != 0 {
                bounding_kept = true;
            }
        }
    } else {
        bounding_kept = true;
    }
    let mut header = Header { version: VERSION_3, pid: 0 };
    let set = [
        Data { effective: keep as u32, permitted: keep as u32, inheritable: 0 },
        Data { effective: (keep >> 32) as u32, permitted: (keep >> 32) as u32, inheritable: 0 },
    ];
    // Only bits we hold can be kept: capset refuses to add any.
    let held = [
        Data { effective: set[0].effective & data[0].permitted, ..set[0] },
        Data { effective: set[1].effective & data[1].permitted, ..set[1] },
    ]
    .map(|d| Data { permitted: d.effective, ..d });
    // SAFETY: a v3 header and two data structs, as capset(2) wants.
    if unsafe { libc::syscall(libc::SYS_capset, &mut header, held.as_ptr()) } != 0 {
        return Err(io::Error::last_os_error().into());
    }
    if bounding_kept {
        bail!("the bounding set could not be shrunk (no CAP_SETPCAP); the rest was dropped");
    }
    Ok(())
}
