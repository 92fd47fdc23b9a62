//! tcpdump-style text for segments and HTTP messages, and their JSON-lines form.
use std::{
    collections::HashMap,
    io::{self, Write},
    net::{IpAddr, SocketAddr},
};

use serde_json::json;

use mirror_capture::{frame::encode_ip, tcp_flags, Segment};
use mirror_flow::ConnId;
use mirror_http::{H2Event, H2Fields, H2Part, HttpEvent, HttpRequest, HttpResponse, RequestView};

/// How the time of a line is shown (tcpdump's default, `-t`, `-tt`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum TimeStyle {
    /// `HH:MM:SS.uuuuuu`, local time.
    Clock,
    None,
    /// Seconds since the epoch: `1700000000.123456`.
    Epoch,
}

/// What is shown of a packet's bytes (`-A`, `-x`, `-X`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum PayloadStyle {
    None,
    Ascii,
    Hex,
    HexAscii,
}

#[derive(Clone, Copy, Debug)]
pub(crate) struct LineStyle {
    pub time: TimeStyle,
    pub payload: PayloadStyle,
    pub quiet: bool,
    pub verbose: bool,
    /// `-S`: absolute sequence numbers.
    pub absolute: bool,
}

impl TimeStyle {
    /// From tcpdump's `-t` count: none given, `-t`, `-tt` (or more).
    pub(crate) fn from_t_flags(count: u8) -> TimeStyle {
        match count {
            0 => TimeStyle::Clock,
            1 => TimeStyle::None,
            _ => TimeStyle::Epoch,
        }
    }
}

pub(crate) fn time(style: TimeStyle, ts_ns: u64) -> String {
    let (secs, micros) = (ts_ns / 1_000_000_000, (ts_ns % 1_000_000_000) / 1000);
    match style {
        TimeStyle::None => String::new(),
        TimeStyle::Epoch => format!("{secs}.{micros:06} "),
        TimeStyle::Clock => {
            let t = secs as libc::time_t;
            // SAFETY: localtime_r fills the tm we pass from a valid time_t.
            let mut tm: libc::tm = unsafe { std::mem::zeroed() };
            unsafe { libc::localtime_r(&t, &mut tm) };
            format!("{:02}:{:02}:{:02}.{micros:06} ", tm.tm_hour, tm.tm_min, tm.tm_sec)
        }
    }
}

/// tcpdump's `addr.port`.
pub(crate) fn endpoint(a: SocketAddr) -> String {
    format!("{}.{}", a.ip(), a.port())
}

fn family(a: SocketAddr) -> &'static str {
    if a.is_ipv4() {
        "IP"
    } else {
        "IP6"
    }
}

/// tcpdump's flag letters, in its order: F S R P . U E W.
pub(crate) fn flags(f: u8) -> String {
    let table = [
        (tcp_flags::FIN, 'F'),
        (tcp_flags::SYN, 'S'),
        (tcp_flags::RST, 'R'),
        (tcp_flags::PSH, 'P'),
        (tcp_flags::ACK, '.'),
        (tcp_flags::URG, 'U'),
        (tcp_flags::ECE, 'E'),
        (tcp_flags::CWR, 'W'),
    ];
    let s: String = table.iter().filter(|(bit, _)| f & bit != 0).map(|(_, c)| *c).collect();
    if s.is_empty() {
        "none".into()
    } else {
        s
    }
}

/// Prints packet lines; keeps tcpdump's per-connection state for relative sequence numbers.
#[derive(Default)]
pub(crate) struct PacketPrinter {
    /// Canonical connection key -> (seq base, ack base), as tcpdump's tcp_seq_hash.
    bases: HashMap<(IpAddr, u16, IpAddr, u16), (u32, u32)>,
    scratch: Vec<u8>,
}

impl PacketPrinter {
    pub(crate) fn write(
        &mut self,
        seg: &Segment,
        style: &LineStyle,
        out: &mut impl Write,
    ) -> io::Result<()> {
        let t = time(style.time, seg.ts_ns);
        let fam = family(seg.src);
        let (src, dst) = (endpoint(seg.src), endpoint(seg.dst));
        let len = seg.segment_len;
        if style.quiet {
            writeln!(out, "{t}{fam} {src} > {dst}: tcp {len}")?;
        } else {
            if style.verbose {
                let ip_len = len + 20 + if seg.src.is_ipv4() { 20 } else { 40 };
                write!(out, "{t}{fam} (proto TCP (6), length {ip_len}")?;
                // Interface and hook are known live; a capture file has neither (ifindex 0).
                if seg.ifindex != 0 {
                    write!(out, ", ifindex {}, {:?}", seg.ifindex, seg.hook)?;
                }
                write!(out, ")\n    ")?;
            } else {
                write!(out, "{t}{fam} ")?;
            }
            let (seq, ack) = if style.absolute { (seg.seq, seg.ack) } else { self.relative(seg) };
            write!(out, "{src} > {dst}: Flags [{}]", flags(seg.flags))?;
            if len > 0 || seg.flags & (tcp_flags::SYN | tcp_flags::FIN | tcp_flags::RST) != 0 {
                write!(out, ", seq {seq}")?;
                if len > 0 {
                    write!(out, ":{}", seq.wrapping_add(len))?;
                }
            }
            if seg.flags & tcp_flags::ACK != 0 {
                write!(out, ", ack {ack}")?;
            }
            writeln!(out, ", win {}, length {len}", seg.window)?;
        }
        if style.payload != PayloadStyle::None {
            self.scratch.clear();
            encode_ip(seg, &mut self.scratch);
            dump_bytes(&self.scratch, style.payload, out)?;
        }
        Ok(())
    }

    /// tcpdump's relative numbering: the first packet of a connection with ACK set (or any
    /// SYN) records the bases and is shown absolute; later packets are shown relative.
    fn relative(&mut self, seg: &Segment) -> (u32, u32) {
        let (seq, ack) = (seg.seq, seg.ack);
        if seg.flags & tcp_flags::ACK == 0 {
            return (seq, ack);
        }
        let (s, d) = (seg.src, seg.dst);
        let rev = s.port() > d.port() || (s.port() == d.port() && octets(s.ip()) > octets(d.ip()));
        let key = if rev {
            (d.ip(), d.port(), s.ip(), s.port())
        } else {
            (s.ip(), s.port(), d.ip(), d.port())
        };
        match self.bases.get(&key) {
            Some(&(b_seq, b_ack)) if seg.flags & tcp_flags::SYN == 0 => {
                if rev {
                    (seq.wrapping_sub(b_ack), ack.wrapping_sub(b_seq))
                } else {
                    (seq.wrapping_sub(b_seq), ack.wrapping_sub(b_ack))
                }
            }
            _ => {
                let bases =
                    if rev { (ack.wrapping_sub(1), seq) } else { (seq, ack.wrapping_sub(1)) };
                self.bases.insert(key, bases);
                (seq, ack)
            }
        }
    }
}

fn octets(ip: IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

/// `-x`, `-X` and `-A` over the IP packet, in tcpdump's layout.
pub(crate) fn dump_bytes(
    bytes: &[u8],
    style: PayloadStyle,
    out: &mut impl Write,
) -> io::Result<()> {
    if style == PayloadStyle::Ascii {
        let mut text = Vec::with_capacity(bytes.len());
        for (i, &b) in bytes.iter().enumerate() {
            match b {
                b'\r' if bytes.get(i + 1) == Some(&b'\n') => {}
                b'\n' | b'\t' | b' '..=b'~' => text.push(b),
                _ => text.push(b'.'),
            }
        }
        out.write_all(&text)?;
        return writeln!(out);
    }
    for (line, chunk) in bytes.chunks(16).enumerate() {
        let hex: Vec<String> = chunk
            .chunks(2)
            .map(|p| p.iter().map(|b| format!("{b:02x}")).collect::<String>())
            .collect();
        let hex = hex.join(" ");
        if style == PayloadStyle::HexAscii {
            let ascii: String = chunk
                .iter()
                .map(|&b| if (b'!'..=b'~').contains(&b) { b as char } else { '.' })
                .collect();
            writeln!(out, "\t0x{:04x}:  {hex:<39}  {ascii}", line * 16)?;
        } else {
            writeln!(out, "\t0x{:04x}:  {hex}", line * 16)?;
        }
    }
    Ok(())
}

/// A request seen on a connection, remembered to describe its response.
struct Pending {
    method: String,
    target: String,
    ts_ns: u64,
}

/// An HTTP/2 stream whose response has not ended yet.
struct H2Pending {
    request: Pending,
    status: Option<u16>,
    body: u64,
}

/// Requests (and HTTP/2 streams) remembered for their responses; beyond this, responses
/// are shown unpaired.
const MAX_PENDING: usize = 100_000;

/// Prints `--http` lines (or their JSON form), pairing responses with requests.
#[derive(Default)]
pub(crate) struct HttpPrinter {
    requests: HashMap<(ConnId, u64), Pending>,
    streams: HashMap<(ConnId, u32), H2Pending>,
}

fn lossy_opt(v: Option<&[u8]>) -> Option<String> {
    v.map(|v| String::from_utf8_lossy(v).into_owned())
}

fn lossy(v: Option<&[u8]>) -> String {
    lossy_opt(v).unwrap_or_default()
}

impl HttpPrinter {
    pub(crate) fn write(
        &mut self,
        event: &HttpEvent,
        time_style: TimeStyle,
        json: bool,
        out: &mut impl Write,
    ) -> io::Result<()> {
        match event {
            HttpEvent::Request(r) => self.request(r, time_style, json, out),
            HttpEvent::Response(r) => self.response(r, time_style, json, out),
            HttpEvent::H2(e) => self.h2(e, time_style, json, out),
        }
    }

    /// HTTP/2: a line when a stream's request headers arrive, and one when its response
    /// ends (with `:status` and, for gRPC, the trailers' `grpc-status`) or it is reset.
    fn h2(
        &mut self,
        e: &H2Event,
        ts: TimeStyle,
        json: bool,
        out: &mut impl Write,
    ) -> io::Result<()> {
        let key = (e.conn, e.stream);
        let ended = match (&e.part, e.dir) {
            (H2Part::Headers { fields, .. }, mirror_capture::Direction::Request) => {
                return self.h2_request(e, fields, ts, json, out);
            }
            (H2Part::Headers { fields, end_stream }, _) => {
                if let Some(p) = self.streams.get_mut(&key) {
                    p.status = fields.status();
                }
                // A gRPC Trailers-Only response carries its grpc-status in the headers.
                end_stream.then(|| lossy_opt(fields.get("grpc-status")))
            }
            (H2Part::Data { bytes, end_stream }, dir) => {
                if let (Some(p), mirror_capture::Direction::Response) =
                    (self.streams.get_mut(&key), dir)
                {
                    p.body += bytes.len() as u64;
                }
                (*end_stream && dir == mirror_capture::Direction::Response).then_some(None)
            }
            (H2Part::Trailers(fields), mirror_capture::Direction::Response) => {
                Some(lossy_opt(fields.get("grpc-status")))
            }
            (H2Part::Trailers(_), _) => None,
            (H2Part::Reset(reason), _) => {
                let Some(p) = self.streams.remove(&key) else { return Ok(()) };
                let reason = format!("{reason:?}");
                if json {
                    let v = json!({
                        "type": "h2_reset", "ts_ns": e.ts_ns, "client": e.conn.client.to_string(),
                        "server": e.conn.server.to_string(), "stream": e.stream, "reason": reason,
                        "request_method": p.request.method, "request_target": p.request.target,
                    });
                    return writeln!(out, "{v}");
                }
                return writeln!(
                    out,
                    "{}{} < {}: h2 stream {} reset ({reason}) for {} {}",
                    time(ts, e.ts_ns),
                    endpoint(e.conn.client),
                    endpoint(e.conn.server),
                    e.stream,
                    p.request.method,
                    p.request.target
                );
            }
        };
        let Some(grpc_status) = ended else { return Ok(()) };
        let Some(p) = self.streams.remove(&key) else { return Ok(()) };
        let us = e.ts_ns.saturating_sub(p.request.ts_ns) / 1000;
        let status = p.status.unwrap_or(0);
        if json {
            let v = json!({
                "type": "h2_response", "ts_ns": e.ts_ns, "client": e.conn.client.to_string(),
                "server": e.conn.server.to_string(), "stream": e.stream, "status": status,
                "grpc_status": grpc_status, "body_bytes": p.body, "latency_us": us,
                "request_method": p.request.method, "request_target": p.request.target,
            });
            return writeln!(out, "{v}");
        }
        let grpc = grpc_status.map(|g| format!(" grpc-status {g}")).unwrap_or_default();
        writeln!(
            out,
            "{}{} < {}: h2 stream {} {status}{grpc} (body {}, {}.{:03} ms) for {} {}",
            time(ts, e.ts_ns),
            endpoint(e.conn.client),
            endpoint(e.conn.server),
            e.stream,
            p.body,
            us / 1000,
            us % 1000,
            p.request.method,
            p.request.target
        )
    }

    fn h2_request(
        &mut self,
        e: &H2Event,
        fields: &H2Fields,
        ts: TimeStyle,
        json: bool,
        out: &mut impl Write,
    ) -> io::Result<()> {
        let (method, target) = (fields.method().to_owned(), fields.target().to_owned());
        let authority = lossy(fields.authority());
        if json {
            let v = json!({
                "type": "h2_request", "ts_ns": e.ts_ns, "client": e.conn.client.to_string(),
                "server": e.conn.server.to_string(), "stream": e.stream, "method": method,
                "authority": authority, "target": target, "version": "HTTP/2",
                "content_type": lossy(fields.get("content-type")),
            });
            writeln!(out, "{v}")?;
        } else {
            writeln!(
                out,
                "{}{} > {}: h2 stream {} {method} {authority} {target} ({} fields)",
                time(ts, e.ts_ns),
                endpoint(e.conn.client),
                endpoint(e.conn.server),
                e.stream,
                fields.len()
            )?;
        }
        if self.streams.len() < MAX_PENDING {
            let request = Pending { method, target, ts_ns: e.ts_ns };
            self.streams.insert((e.conn, e.stream), H2Pending { request, status: None, body: 0 });
        }
        Ok(())
    }

    fn request(
        &mut self,
        r: &HttpRequest,
        ts: TimeStyle,
        json: bool,
        out: &mut impl Write,
    ) -> io::Result<()> {
        let method = r.head.method().unwrap_or("").to_owned();
        let target = r.head.target().unwrap_or("").to_owned();
        let host = r
            .head
            .header("host")
            .map(|h| String::from_utf8_lossy(h).into_owned())
            .unwrap_or_default();
        let (head, body) = (r.head.bytes().len(), r.body.len());
        if json {
            let v = json!({
                "type": "request", "ts_ns": r.first_ts_ns, "client": r.conn.client.to_string(),
                "server": r.conn.server.to_string(), "method": method, "host": host, "target": target,
                "version": format!("HTTP/1.{}", r.head.version()), "head_bytes": head, "body_bytes": body,
            });
            writeln!(out, "{v}")?;
        } else {
            writeln!(
                out,
                "{}{} > {}: {method} {host} {target} HTTP/1.{} (head {head}, body {body})",
                time(ts, r.first_ts_ns),
                endpoint(r.conn.client),
                endpoint(r.conn.server),
                r.head.version()
            )?;
        }
        if self.requests.len() < MAX_PENDING {
            self.requests.insert((r.conn, r.id), Pending { method, target, ts_ns: r.first_ts_ns });
        }
        Ok(())
    }

    fn response(
        &mut self,
        r: &HttpResponse,
        ts: TimeStyle,
        json: bool,
        out: &mut impl Write,
    ) -> io::Result<()> {
        let request = r.request_id.and_then(|id| self.requests.remove(&(r.conn, id)));
        let latency_us = request.as_ref().map(|p| r.last_ts_ns.saturating_sub(p.ts_ns) / 1000);
        let status = r.head.status().unwrap_or(0);
        let reason = r.head.reason().unwrap_or("");
        let (head, body) = (r.head.bytes().len(), r.body_len);
        if json {
            let v = json!({
                "type": "response", "ts_ns": r.first_ts_ns, "client": r.conn.client.to_string(),
                "server": r.conn.server.to_string(), "status": status, "reason": reason,
                "head_bytes": head, "body_bytes": body, "latency_us": latency_us,
                "request_method": request.as_ref().map(|p| p.method.clone()),
                "request_target": request.as_ref().map(|p| p.target.clone()),
            });
            return writeln!(out, "{v}");
        }
        write!(
            out,
            "{}{} < {}: {status} {reason} (head {head}, body {body}",
            time(ts, r.first_ts_ns),
            endpoint(r.conn.client),
            endpoint(r.conn.server)
        )?;
        match (&request, latency_us) {
            (Some(p), Some(us)) => {
                writeln!(out, ", {}.{:03} ms) for {} {}", us / 1000, us % 1000, p.method, p.target)
            }
            _ => writeln!(out, ") unpaired"),
        }
    }
}

/// The JSON-lines form of a packet.
pub(crate) fn packet_json(seg: &Segment, out: &mut impl Write) -> io::Result<()> {
    let v = json!({
        "type": "packet", "ts_ns": seg.ts_ns, "src": seg.src.to_string(), "dst": seg.dst.to_string(),
        "flags": flags(seg.flags), "seq": seg.seq, "ack": seg.ack, "win": seg.window,
        "length": seg.segment_len, "ifindex": seg.ifindex,
    });
    writeln!(out, "{v}")
}
