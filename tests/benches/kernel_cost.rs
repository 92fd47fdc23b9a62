//! The kernel program alone (scenario 3): `BPF_PROG_TEST_RUN` runs it on a crafted frame
//! many times and the kernel reports the mean time per run, free of the contention a loaded
//! machine adds. Run by `cargo xtask bench`; needs root.
use std::os::fd::{AsFd, AsRawFd};

use mirror::tap::{Tap, TapSettings};
use mirror_tests::{
    frames::TcpFrame,
    topology::{Family, Topology},
};

const PORT: u16 = 8000;
/// Runs per round: small enough that the 16 MiB ring never fills (5000 x 2128 B).
const REPEAT: u32 = 5_000;
const ROUNDS: usize = 5;

/// BPF_PROG_TEST_RUN: mean ns per run of `prog_fd` on `frame`.
fn test_run(prog_fd: i32, frame: &[u8]) -> u32 {
    // struct bpf_attr, the `test` member: prog_fd, retval, data_size_in, data_size_out,
    // data_in, data_out, repeat, duration (the rest stays zero).
    let mut attr = [0u8; 80];
    attr[0..4].copy_from_slice(&(prog_fd as u32).to_ne_bytes());
    attr[8..12].copy_from_slice(&(frame.len() as u32).to_ne_bytes());
    attr[16..24].copy_from_slice(&(frame.as_ptr() as u64).to_ne_bytes());
    attr[32..36].copy_from_slice(&REPEAT.to_ne_bytes());
    const BPF_PROG_TEST_RUN: libc::c_long = 10;
    // SAFETY: the attr buffer is valid for its size; the kernel reads `frame` through data_in.
    let rc =
        unsafe { libc::syscall(libc::SYS_bpf, BPF_PROG_TEST_RUN, attr.as_mut_ptr(), attr.len()) };
    assert_eq!(rc, 0, "BPF_PROG_TEST_RUN: {}", std::io::Error::last_os_error());
    u32::from_ne_bytes(attr[36..40].try_into().unwrap())
}

fn main() {
    mirror_tests::require_root();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let _guard = rt.enter();
    let topo = Topology::new().unwrap();
    let mut tap = Tap::attach(&TapSettings {
        interfaces: vec![topo.server_host_if.clone()],
        ports: vec![PORT],
        ..TapSettings::default()
    })
    .unwrap();
    let mut source = tap.segments().unwrap();
    let prog = aya::programs::loaded_programs()
        .flatten()
        .find(|p| p.name_as_str() == Some("mirror_egress"))
        .expect("the tap's program is loaded");
    let fd = prog.fd().unwrap();
    let (client, server) = (topo.client_addr(Family::V4), topo.server_addr(Family::V4));
    let get = b"GET /api/v1/items/42 HTTP/1.1\r\nHost: svc:8000\r\nUser-Agent: bench\r\nAccept: */*\r\n\r\n";
    let cases: Vec<(&str, TcpFrame)> = vec![
        ("small request (89 B payload), copied", TcpFrame::new(client, server, 40000, PORT, get)),
        ("1448 B segment, copied", TcpFrame::new(client, server, 40000, PORT, &[b'x'; 1448])),
        (
            "pure ACK of a selected flow",
            TcpFrame { flags: 0x10, ..TcpFrame::new(client, server, 40000, PORT, b"") },
        ),
        ("segment of another port", TcpFrame::new(client, server, 40000, 9999, get)),
    ];
    println!("| frame | ns per run, median of {ROUNDS} x {REPEAT} runs (min-max) |");
    println!("|---|---|");
    let mut batch = Vec::new();
    for (name, frame) in cases {
        let bytes = frame.build();
        let mut runs: Vec<u32> = (0..ROUNDS)
            .map(|_| {
                let ns = test_run(fd.as_fd().as_raw_fd(), &bytes);
                // Keep the ring from filling up (a full ring would make runs cheaper).
                while source.drain_now(&mut batch) > 0 {
                    batch.clear();
                }
                ns
            })
            .collect();
        runs.sort_unstable();
        println!("| {name} | {} ({}-{}) |", runs[ROUNDS / 2], runs[0], runs[ROUNDS - 1]);
    }
    let k = tap.counters().unwrap();
    assert_eq!(k.lost, 0, "the ring never filled: {k}");
    tap.detach().unwrap();
}
