//! pcap and pcapng files: a [`CaptureSource`] reading them (tcpdump's, tshark's, ours) and a
//! sink writing segments as Ethernet frames that tcpdump, tshark and Wireshark open.
use std::{
    fs::File,
    io::{self, BufReader, BufWriter, Read},
    path::Path,
    time::Duration,
};

use anyhow::{bail, Context, Result};
use pcap_file::{
    pcap::{PcapHeader, PcapPacket, PcapReader, PcapWriter},
    pcapng::{blocks::interface_description::InterfaceDescriptionOption, Block, PcapNgReader},
    DataLink, TsResolution,
};

use crate::{
    frame::{decode, encode, Classifier, LinkType},
    CaptureSource, Segment,
};

/// Packets decoded per batch.
const BATCH: usize = 512;

enum Reader {
    Pcap(PcapReader<BufReader<File>>, Option<LinkType>),
    /// Link type and timestamp unit (ns per tick) by interface id.
    PcapNg(PcapNgReader<BufReader<File>>, Vec<(Option<LinkType>, u64)>),
}

/// Counts of a file's packets.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FileStats {
    pub packets: u64,
    /// Packets that are not TCP segments the classifier selects (other protocols, other
    /// ports, unknown link types, malformed headers).
    pub skipped: u64,
}

/// A frame read from a file: link type (if supported), capture time (epoch ns), bytes.
type Frame = (Option<LinkType>, u64, Vec<u8>);

/// Segments from a capture file, in file order.
pub struct PcapSource {
    reader: Reader,
    classifier: Classifier,
    stats: FileStats,
}

impl PcapSource {
    /// Opens a pcap or pcapng file (told apart by their magic numbers).
    pub fn open(path: &Path, classifier: Classifier) -> Result<Self> {
        let mut magic = [0u8; 4];
        File::open(path)
            .and_then(|mut f| f.read_exact(&mut magic))
            .with_context(|| format!("reading {}", path.display()))?;
        let file = BufReader::new(File::open(path)?);
        let reader = if magic == [0x0a, 0x0d, 0x0d, 0x0a] {
            let r =
                PcapNgReader::new(file).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
            Reader::PcapNg(r, Vec::new())
        } else {
            let r =
                PcapReader::new(file).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
            let link = LinkType::from_linktype(u32::from(r.header().datalink));
            if link.is_none() {
                bail!("{}: unsupported link type {:?}", path.display(), r.header().datalink);
            }
            Reader::Pcap(r, link)
        };
        Ok(Self { reader, classifier, stats: FileStats::default() })
    }

    pub fn stats(&self) -> FileStats {
        self.stats
    }

    /// The next frame: its link type, capture time (ns since the epoch) and bytes.
    fn next_frame(&mut self) -> Result<Option<Frame>> {
        loop {
            match &mut self.reader {
                Reader::Pcap(r, link) => {
                    return match r.next_packet() {
                        None => Ok(None),
                        Some(Err(e)) => bail!("bad pcap packet: {e}"),
                        Some(Ok(p)) => {
                            Ok(Some((*link, p.timestamp.as_nanos() as u64, p.data.into_owned())))
                        }
                    };
                }
                Reader::PcapNg(r, links) => match r.next_block() {
                    None => return Ok(None),
                    Some(Err(e)) => bail!("bad pcapng block: {e}"),
                    Some(Ok(Block::InterfaceDescription(idb))) => {
                        let unit = idb.options.iter().find_map(|o| match o {
                            InterfaceDescriptionOption::IfTsResol(r) => Some(tick_ns(*r)),
                            _ => None,
                        });
                        // Without if_tsresol a tick is a microsecond.
                        let link = LinkType::from_linktype(u32::from(idb.linktype));
                        links.push((link, unit.unwrap_or(1000)));
                    }
                    Some(Ok(Block::EnhancedPacket(p))) => {
                        let (link, unit) =
                            links.get(p.interface_id as usize).copied().unwrap_or((None, 1000));
                        // pcap-file hands the raw tick count over as nanoseconds.
                        let ts = (p.timestamp.as_nanos() as u64).saturating_mul(unit);
                        return Ok(Some((link, ts, p.data.into_owned())));
                    }
                    Some(Ok(Block::SimplePacket(p))) => {
                        let link = links.first().and_then(|l| l.0);
                        return Ok(Some((link, 0, p.data.into_owned())));
                    }
                    Some(Ok(_)) => {}
                },
            }
        }
    }
}

impl CaptureSource for PcapSource {
    async fn next_batch(&mut self, out: &mut Vec<Segment>) -> io::Result<bool> {
        let mut added = 0;
        while added < BATCH {
            let frame = self
                .next_frame()
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("{e:#}")))?;
            let Some((link, ts_ns, data)) = frame else { break };
            self.stats.packets += 1;
            match link.and_then(|l| decode(l, &data, ts_ns, &self.classifier)) {
                Some(seg) => {
                    out.push(seg);
                    added += 1;
                }
                None => self.stats.skipped += 1,
            }
        }
        Ok(added > 0)
    }
}

/// Nanoseconds per timestamp tick for pcapng's if_tsresol: 10^-n or 2^-n seconds.
fn tick_ns(resol: u8) -> u64 {
    let n = u32::from(resol & 0x7f);
    if resol & 0x80 == 0 {
        10u64.checked_pow(9u32.saturating_sub(n)).unwrap_or(1)
    } else {
        // Binary fractions finer than 1 ns are rounded to 1 ns.
        (1_000_000_000u64 >> n.min(63)).max(1)
    }
}

/// Writes segments as Ethernet frames to a pcap file (microsecond timestamps, the most
/// widely read variant).
pub struct PcapSink {
    writer: PcapWriter<BufWriter<File>>,
    snaplen: usize,
    frame: Vec<u8>,
    packets: u64,
}

impl PcapSink {
    pub fn create(path: &Path, snaplen: u32) -> Result<Self> {
        let file = File::create(path).with_context(|| format!("creating {}", path.display()))?;
        let header = PcapHeader {
            snaplen,
            datalink: DataLink::ETHERNET,
            ts_resolution: TsResolution::MicroSecond,
            ..PcapHeader::default()
        };
        let writer = PcapWriter::with_header(BufWriter::new(file), header)
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        Ok(Self { writer, snaplen: snaplen as usize, frame: Vec::new(), packets: 0 })
    }

    /// Writes one whole segment (merge GSO chunks first) captured at `ts_ns` (epoch).
    pub fn write(&mut self, seg: &Segment) -> Result<()> {
        self.frame.clear();
        encode(seg, &mut self.frame);
        let kept = self.frame.len().min(self.snaplen);
        let ts = Duration::from_nanos(seg.ts_ns);
        let packet = PcapPacket::new(ts, self.frame.len() as u32, &self.frame[..kept]);
        self.writer.write_packet(&packet).map_err(|e| anyhow::anyhow!("writing pcap: {e}"))?;
        self.packets += 1;
        Ok(())
    }

    pub fn packets(&self) -> u64 {
        self.packets
    }

    pub fn finish(self) -> Result<()> {
        use std::io::Write;
        self.writer.into_writer().flush().context("flushing pcap")
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn pcapng_tick_units() {
        assert_eq!(super::tick_ns(6), 1000);
        assert_eq!(super::tick_ns(9), 1);
        assert_eq!(super::tick_ns(3), 1_000_000);
        assert_eq!(super::tick_ns(0x80 | 10), 976_562);
    }
}
