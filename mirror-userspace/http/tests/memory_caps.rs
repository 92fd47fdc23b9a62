//! 100 000 half-open connections and many partial requests: the flow table stays within its
//! configured caps, evictions are counted, and the heap (measured by a counting allocator)
//! stays bounded.
use std::{
    alloc::{GlobalAlloc, Layout, System},
    sync::atomic::{AtomicUsize, Ordering},
};

use mirror_capture::Direction;
use mirror_flow::ReassemblyConfig;
use mirror_http::{extractor, HttpConfig};
use mirror_testkit::Conversation;

struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let now = LIVE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
        PEAK.fetch_max(now, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

#[test]
fn half_open_connections_and_partial_requests_stay_within_the_caps() {
    const MAX_CONNECTIONS: usize = 20_000;
    const MAX_TOTAL: usize = 8 << 20;
    let config = ReassemblyConfig {
        max_connections: MAX_CONNECTIONS,
        max_buffered_total: MAX_TOTAL,
        max_pending_per_direction: 64 << 10,
        max_buffered_per_connection: 1 << 20,
        ..ReassemblyConfig::default()
    };
    let mut x = extractor(config, HttpConfig::default());
    let mut events = Vec::new();
    let baseline = LIVE.load(Ordering::Relaxed);
    PEAK.store(baseline, Ordering::Relaxed);
    let server = "10.9.0.1:8080".parse().unwrap();
    for i in 0..100_000u32 {
        let client =
            format!("10.{}.{}.{}:{}", 10 + i % 200, (i >> 8) & 255, i & 255, 1024 + i % 60000);
        let mut c = Conversation::new(client.parse().unwrap(), server, i.wrapping_mul(7919), 1);
        let open = c.open();
        x.push(&open[0], &mut events); // SYN only: half-open
        match i % 4 {
            // A head that never completes.
            1 => {
                for s in c.request(b"GET /partial HTTP/1.1\r\nHost: a\r\nX-Pad: ", 1448) {
                    x.push(&s, &mut events);
                }
            }
            // A body that never completes.
            2 => {
                let head = b"POST /big HTTP/1.1\r\nContent-Length: 1000000\r\n\r\n";
                let body = vec![b'b'; 700 + (i as usize % 3000)];
                for s in c.request(&[&head[..], &body].concat(), 1448) {
                    x.push(&s, &mut events);
                }
            }
            // Out-of-order data behind a hole that is never filled.
            3 => {
                let mut segs = c.request(&vec![b'o'; 4000], 1000);
                segs.remove(0);
                for s in segs {
                    x.push(&s, &mut events);
                }
            }
            _ => {}
        }
        assert!(x.connections() <= MAX_CONNECTIONS);
        assert!(x.buffered() <= MAX_TOTAL, "{} buffered", x.buffered());
    }
    let stats = *x.stats();
    assert_eq!(stats.connections_opened, 100_000);
    let evicted = stats.evicted_connection_cap + stats.evicted_total_memory;
    assert_eq!(evicted + x.connections() as u64, 100_000, "{stats:?}");
    assert!(stats.evicted_total_memory > 0, "the byte cap was reached: {stats:?}");
    assert!(events.is_empty(), "no request was complete");

    // Heap: the table's buffers within MAX_TOTAL plus bounded per-connection state.
    let peak = PEAK.load(Ordering::Relaxed) - baseline;
    let per_connection = (peak.saturating_sub(MAX_TOTAL)) / MAX_CONNECTIONS;
    eprintln!("peak heap {} KiB for {MAX_CONNECTIONS} connections ({per_connection} B each beyond the byte cap)", peak >> 10);
    assert!(peak < MAX_TOTAL + MAX_CONNECTIONS * 2048, "peak heap {peak} bytes");

    // Closing everything gives the memory back.
    x.finish(&mut events);
    assert_eq!((x.connections(), x.buffered()), (0, 0));
    let _ = Direction::Request;
}
