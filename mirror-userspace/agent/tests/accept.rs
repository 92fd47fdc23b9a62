//! The metrics endpoint when the process runs out of descriptors: its accept loop neither
//! spins nor stops, and serves again once descriptors are free. (Its own test binary: it
//! lowers the process's descriptor limit.)
use std::{
    sync::{atomic::AtomicBool, Arc},
    time::Duration,
};

use mirror_agent::metrics::{self, Metrics};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

fn cpu_time() -> Duration {
    // SAFETY: getrusage writes into the struct we pass.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

async fn healthz(addr: std::net::SocketAddr) -> std::io::Result<String> {
    let mut conn = TcpStream::connect(addr).await?;
    conn.write_all(b"GET /healthz HTTP/1.0\r\n\r\n").await?;
    let mut text = String::new();
    conn.read_to_string(&mut text).await?;
    Ok(text)
}

#[tokio::test]
async fn out_of_descriptors_the_metrics_endpoint_waits_then_serves_again() {
    let listener = metrics::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let ready = Arc::new(AtomicBool::new(true));
    tokio::spawn(metrics::serve(listener, Arc::new(Metrics::default()), ready, None));
    assert!(healthz(addr).await.unwrap().ends_with("ok\n"));

    let open = std::fs::read_dir("/proc/self/fd").unwrap().count() as u64;
    let limit = libc::rlimit { rlim_cur: open + 16, rlim_max: libc::RLIM_INFINITY };
    // SAFETY: setrlimit with a valid struct; only this test runs in this process.
    let mut old: libc::rlimit = unsafe { std::mem::zeroed() };
    unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut old) };
    let limit = libc::rlimit { rlim_max: old.rlim_max, ..limit };
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) }, 0);
    // Connections the kernel completes but the server cannot accept: descriptors run out.
    let mut clients = Vec::new();
    while let Ok(Ok(c)) =
        tokio::time::timeout(Duration::from_secs(1), TcpStream::connect(addr)).await
    {
        clients.push(c);
        if clients.len() > 64 {
            break;
        }
    }
    assert!(clients.len() < 64, "the limit should have been reached");
    let (cpu, wall) = (cpu_time(), tokio::time::Instant::now());
    tokio::time::sleep(Duration::from_millis(500)).await;
    let busy = cpu_time() - cpu;
    assert!(busy < wall.elapsed() / 4, "the accept loop spins: {busy:?} of CPU");

    drop(clients);
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &old) }, 0);
    let mut answered = None;
    for _ in 0..100 {
        if let Ok(text) = healthz(addr).await {
            answered = Some(text);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(answered.is_some_and(|t| t.ends_with("ok\n")), "the endpoint stopped serving");
}
