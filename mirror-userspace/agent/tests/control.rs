//! The control channel in process: segments keep flowing from a source while commands
//! replace the settings and attach or detach interfaces, each applied between batches and
//! answered.
use std::{
    collections::HashSet,
    io,
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use anyhow::Result;
use mirror_agent::{
    control::{run_controlled, Command, Control, Taps},
    pipeline::{MirrorSettings, Mirroring, ShadowTarget},
};
use mirror_capture::{CaptureSource, Segment};
use mirror_testkit::{Conversation, TestShadow, OK_EMPTY};
use tokio::sync::{mpsc, watch};

/// Batches handed over by the test, one at a time; ends when the sender is dropped. Counts
/// the batches taken: the driver feeds a batch before it looks at the next command, so a
/// command sent once a batch is taken is applied after that batch.
struct ChannelSource(mpsc::UnboundedReceiver<Vec<Segment>>, watch::Sender<usize>);

impl CaptureSource for ChannelSource {
    async fn next_batch(&mut self, out: &mut Vec<Segment>) -> io::Result<bool> {
        let Some(batch) = self.0.recv().await else { return Ok(false) };
        out.extend(batch);
        self.1.send_modify(|n| *n += 1);
        Ok(true)
    }
}

/// Interfaces "attached", as the kernel tap would keep them.
#[derive(Default)]
struct FakeTaps(Arc<Mutex<HashSet<String>>>);

impl Taps for FakeTaps {
    fn attach_interface(&mut self, iface: &str) -> Result<()> {
        anyhow::ensure!(iface != "missing0", "interfaces: no such interface {iface:?}");
        self.0.lock().unwrap().insert(iface.to_owned());
        Ok(())
    }

    fn detach_interface(&mut self, iface: &str) -> bool {
        self.0.lock().unwrap().remove(iface)
    }

    fn is_attached(&self, iface: &str) -> bool {
        self.0.lock().unwrap().contains(iface)
    }
}

fn settings(shadow: SocketAddr, percent: f64) -> MirrorSettings {
    let uri = format!("http://{shadow}").parse().unwrap();
    MirrorSettings {
        shadows: vec![ShadowTarget { uri, name: "shadow".into(), percent, tls: None }],
        ..MirrorSettings::default()
    }
}

/// Two GETs on a new connection from `port`.
fn gets(port: u16, paths: [&str; 2]) -> Vec<Segment> {
    let client = format!("10.0.0.1:{port}").parse().unwrap();
    let mut c = Conversation::new(client, "10.0.0.2:8080".parse().unwrap(), 1, 1);
    let mut segs = c.open();
    for path in paths {
        segs.extend(
            c.request(format!("GET {path} HTTP/1.1\r\nHost: svc\r\n\r\n").as_bytes(), 1448),
        );
        segs.extend(c.response(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", 1448));
    }
    segs.extend(c.close());
    segs
}

/// The target of the next request the shadow receives.
async fn next(shadow: &mut TestShadow) -> String {
    shadow.next_head().await.split(' ').nth(1).unwrap_or("").to_owned()
}

#[tokio::test]
async fn commands_apply_between_batches_while_segments_flow() {
    let mut mirrored = TestShadow::start(Some(OK_EMPTY)).await;
    let addr = mirrored.addr;
    let (control, mut commands) = Control::channel();
    let (segments, rx) = mpsc::unbounded_channel();
    let (taken_tx, mut taken) = watch::channel(0);
    let mut source = ChannelSource(rx, taken_tx);
    let mut mirroring = Mirroring::start(settings(addr, 100.0), None);
    let attached = Arc::new(Mutex::new(HashSet::from(["veth-a".to_owned()])));
    let mut taps = FakeTaps(attached.clone());
    let agent = run_controlled(
        &mut mirroring,
        &mut source,
        &mut taps,
        &mut commands,
        std::future::pending(),
    );
    let script = async {
        segments.send(gets(40001, ["/a1", "/a2"])).unwrap();
        assert_eq!([next(&mut mirrored).await, next(&mut mirrored).await], ["/a1", "/a2"]);
        // Nothing is mirrored at 0 %, then everything again at 100 %.
        control.send(Command::Replace(Box::new(settings(addr, 0.0)))).await.unwrap();
        segments.send(gets(40002, ["/b1", "/b2"])).unwrap();
        taken.wait_for(|n| *n == 2).await.unwrap();
        control.send(Command::Replace(Box::new(settings(addr, 100.0)))).await.unwrap();
        segments.send(gets(40003, ["/c1", "/c2"])).unwrap();
        assert_eq!([next(&mut mirrored).await, next(&mut mirrored).await], ["/c1", "/c2"]);
        control.send(Command::Attach("veth-b".into())).await.unwrap();
        control.send(Command::Attach("veth-b".into())).await.unwrap(); // already: no-op
        let missing = control.send(Command::Attach("missing0".into())).await.unwrap_err();
        assert!(format!("{missing:#}").contains("missing0"), "{missing:#}");
        control.send(Command::Detach("veth-a".into())).await.unwrap();
        let twice = control.send(Command::Detach("veth-a".into())).await.unwrap_err();
        assert!(format!("{twice:#}").contains("not attached"), "{twice:#}");
        drop(segments); // the source ends: the loop returns
    };
    let (ran, ()) = tokio::join!(agent, script);
    ran.unwrap();
    assert_eq!(*attached.lock().unwrap(), HashSet::from(["veth-b".to_owned()]));
    let summary = mirroring.summary(None);
    assert_eq!(summary.captured_requests, 6, "requests are counted across replacements");
    assert_eq!(summary.shadows[0].offered, 2, "the last settings' shadow: /c1 and /c2");
    assert!(mirrored.heads.try_recv().is_err(), "/b1 and /b2 were not mirrored at 0 %");
    // The agent has stopped: the control channel says so.
    drop(commands);
    assert!(control.send(Command::Detach("veth-b".into())).await.is_err());
}
