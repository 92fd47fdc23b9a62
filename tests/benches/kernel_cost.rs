//! The kernel program alone (scenario 3): `BPF_PROG_TEST_RUN` runs it on a crafted frame
//! many times and the kernel reports the mean time per run, free of the contention a loaded
//! machine adds. Run by `cargo xtask bench`; needs root.
use std::os::fd::{AsFd, AsRawFd};

use mirror_tap::{Tap, TapSettings};
use mirror_tests::{
    bench::{self, Spread},
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

/// Program types for [`empty_program`].
const SCHED_CLS: u32 = 3;
const XDP: u32 = 6;

/// A program of `prog_type` that does nothing but return (`TC_ACT_UNSPEC`, `XDP_PASS`): its
/// time per run is the test-run harness's own cost, which the rows include.
fn empty_program(prog_type: u32) -> std::os::fd::OwnedFd {
    // bpf_insn: code, dst/src registers, offset, immediate. mov64 r0, -1 (or 2); exit.
    let verdict: i32 = if prog_type == XDP { 2 } else { -1 };
    let mut mov = [0xb7, 0, 0, 0, 0, 0, 0, 0];
    mov[4..8].copy_from_slice(&verdict.to_le_bytes());
    let insns: [[u8; 8]; 2] = [mov, [0x95, 0, 0, 0, 0, 0, 0, 0]];
    let license = c"GPL";
    // struct bpf_attr for BPF_PROG_LOAD: prog_type, insn_cnt, insns, license (then zeros).
    let mut attr = [0u8; 128];
    attr[0..4].copy_from_slice(&prog_type.to_ne_bytes());
    attr[4..8].copy_from_slice(&(insns.len() as u32).to_ne_bytes());
    attr[8..16].copy_from_slice(&(insns.as_ptr() as u64).to_ne_bytes());
    attr[16..24].copy_from_slice(&(license.as_ptr() as u64).to_ne_bytes());
    const BPF_PROG_LOAD: libc::c_long = 5;
    // SAFETY: attr and the buffers it points to are valid for the call.
    let fd = unsafe { libc::syscall(libc::SYS_bpf, BPF_PROG_LOAD, attr.as_mut_ptr(), attr.len()) };
    assert!(fd >= 0, "BPF_PROG_LOAD: {}", std::io::Error::last_os_error());
    // SAFETY: the kernel just returned this descriptor to us.
    unsafe { std::os::fd::FromRawFd::from_raw_fd(fd as i32) }
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
    // (frame, payload bytes copied into the ring)
    let cases: Vec<(&str, TcpFrame, usize)> = vec![
        (
            "small request (89 B payload), copied",
            TcpFrame::new(client, server, 40000, PORT, get),
            get.len(),
        ),
        ("1448 B segment, copied", TcpFrame::new(client, server, 40000, PORT, &[b'x'; 1448]), 1448),
        (
            "pure ACK of a selected flow",
            TcpFrame { flags: 0x10, ..TcpFrame::new(client, server, 40000, PORT, b"") },
            0,
        ),
        ("segment of another port", TcpFrame::new(client, server, 40000, 9999, get), 0),
    ];
    // The test-run harness's own cost: the small request through a program that does nothing.
    let empty = empty_program(SCHED_CLS);
    let frame = TcpFrame::new(client, server, 40000, PORT, get).build();
    let harness = Spread::of((0..ROUNDS).map(|_| test_run(empty.as_raw_fd(), &frame) as f64));
    let mut table = format!(
        "| frame | ns per run, median of {ROUNDS} x {REPEAT} runs (min-max) | minus the harness \
         |\n|---|---|---|\n\
         | any, through an empty program (the harness's own cost) | {} | - |\n",
        harness.show(0)
    );
    let mut batch = Vec::new();
    let mut copies = Vec::new();
    for (name, frame, copied) in cases {
        let bytes = frame.build();
        let runs: Vec<u32> = (0..ROUNDS)
            .map(|_| {
                let ns = test_run(fd.as_fd().as_raw_fd(), &bytes);
                // Keep the ring from filling up (a full ring would make runs cheaper).
                while source.drain_now(&mut batch) > 0 {
                    batch.clear();
                }
                ns
            })
            .collect();
        let ns = Spread::of(runs.iter().map(|&r| r as f64));
        let own = ns.median - harness.median;
        table += &format!("| {name} | {} | {own:.0} |\n", ns.show(0));
        if copied > 0 {
            copies.push((copied as f64, own));
        }
    }
    // What a copied KiB adds: the two copied frames differ only in payload size.
    let [(small_b, small_ns), (large_b, large_ns)] = copies[..] else { unreachable!() };
    table += &format!(
        "\nEach KiB of payload copied adds {:.0} ns (the 1448 B row minus the 89 B row, per KiB \
         of difference).\n",
        (large_ns - small_ns) * 1024.0 / (large_b - small_b)
    );
    let k = tap.counters().unwrap();
    assert_eq!(k.get(mirror_tap::Counter::Lost), 0, "the ring never filled: {k}");
    tap.detach();
    table += &xdp_rows(&topo, client, server, get);
    bench::report("kernel_cost", &table);
}

/// The XDP form of the program (`mirror run --xdp`) on the same frames, against an empty
/// XDP program's harness cost.
fn xdp_rows(
    topo: &Topology,
    client: std::net::IpAddr,
    server: std::net::IpAddr,
    get: &[u8],
) -> String {
    let mut tap = Tap::attach(&TapSettings {
        interfaces: vec![topo.client_host_if.clone()],
        ports: vec![PORT],
        xdp: true,
        ..TapSettings::default()
    })
    .unwrap();
    let mut source = tap.segments().unwrap();
    let prog = aya::programs::loaded_programs()
        .flatten()
        .find(|p| p.name_as_str() == Some("mirror_xdp"))
        .expect("the XDP program is loaded");
    let fd = prog.fd().unwrap();
    let empty = empty_program(XDP);
    let small = TcpFrame::new(client, server, 40000, PORT, get).build();
    let harness = Spread::of((0..ROUNDS).map(|_| test_run(empty.as_raw_fd(), &small) as f64));
    let mut rows = format!(
        "\n| XDP form (`--xdp`) | ns per run | minus the harness |\n|---|---|---|\n\
         | any, through an empty XDP program | {} | - |\n",
        harness.show(0)
    );
    let large = TcpFrame::new(client, server, 40000, PORT, &[b'x'; 1448]).build();
    let mut batch = Vec::new();
    for (name, frame) in
        [("small request (89 B payload), copied", small), ("1448 B segment, copied", large)]
    {
        let runs = (0..ROUNDS).map(|_| {
            let ns = test_run(fd.as_fd().as_raw_fd(), &frame);
            while source.drain_now(&mut batch) > 0 {
                batch.clear();
            }
            ns as f64
        });
        let ns = Spread::of(runs);
        rows += &format!("| {name} | {} | {:.0} |\n", ns.show(0), ns.median - harness.median);
    }
    let k = tap.counters().unwrap();
    assert_eq!(k.get(mirror_tap::Counter::Lost), 0, "the ring never filled: {k}");
    rows
}
