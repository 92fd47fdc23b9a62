//! tcpdump's filter expressions, the subset that makes sense for TCP segments:
//! `port`, `src port`, `dst port`, `host`, `src host`, `dst host`, `net CIDR` (and `src/dst
//! net`), `tcp`, `ip`, `ip6`, `and`/`&&`, `or`/`||`, `not`/`!`, parentheses, and tcpdump's
//! shorthand that repeats the last qualifier for a bare value (`port 80 or 443`).
//!
//! [`Filter::ports`] extracts what the kernel can select (a set of ports every matching
//! packet must use); the whole expression is then evaluated in userspace.
use std::{
    collections::BTreeSet,
    fmt,
    net::{IpAddr, SocketAddr},
};

use ipnet::IpNet;

use mirror_capture::Segment;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
/// Which side of the packet a primitive looks at.
pub(super) enum Dir {
    Src,
    Dst,
    Either,
}

#[derive(Clone, Debug, PartialEq, Eq)]
/// One primitive of an expression.
pub(super) enum Prim {
    Port(Dir, u16),
    Host(Dir, IpAddr),
    Net(Dir, IpNet),
    Tcp,
    Ip,
    Ip6,
}

/// A parsed expression.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Filter {
    All,
    Prim(Prim),
    Not(Box<Filter>),
    And(Box<Filter>, Box<Filter>),
    Or(Box<Filter>, Box<Filter>),
}

/// A syntax error, worded like tcpdump's.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct FilterError(pub String);

impl fmt::Display for FilterError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "syntax error in filter expression: {}", self.0)
    }
}

impl std::error::Error for FilterError {}

impl Filter {
    /// Parses the words of an expression (as given on the command line).
    pub(super) fn parse(words: &[String]) -> Result<Filter, FilterError> {
        let text = words.join(" ");
        let tokens = tokenize(&text);
        if tokens.is_empty() {
            return Ok(Filter::All);
        }
        let mut p = Parser { tokens, pos: 0, last: None };
        let f = p.or()?;
        match p.peek() {
            None => Ok(f),
            Some(t) => Err(FilterError(format!("unexpected '{t}'"))),
        }
    }

    pub(super) fn matches(&self, s: &Segment) -> bool {
        self.matches_addrs(s.src, s.dst)
    }

    /// Evaluates the expression for a packet from `src` to `dst` (all a primitive looks
    /// at; watched events carry no more).
    pub(super) fn matches_addrs(&self, src: SocketAddr, dst: SocketAddr) -> bool {
        match self {
            Filter::All => true,
            Filter::Prim(p) => prim_matches(p, src, dst),
            Filter::Not(f) => !f.matches_addrs(src, dst),
            Filter::And(a, b) => a.matches_addrs(src, dst) && b.matches_addrs(src, dst),
            Filter::Or(a, b) => a.matches_addrs(src, dst) || b.matches_addrs(src, dst),
        }
    }

    /// Ports one of which every matching segment uses (as source or destination), if the
    /// expression implies such a set: the kernel then selects only those.
    pub(super) fn ports(&self) -> Option<BTreeSet<u16>> {
        match self {
            Filter::Prim(Prim::Port(_, p)) => Some(BTreeSet::from([*p])),
            Filter::And(a, b) => match (a.ports(), b.ports()) {
                (Some(x), Some(y)) => Some(if x.len() <= y.len() { x } else { y }),
                (x, y) => x.or(y),
            },
            Filter::Or(a, b) => Some(a.ports()?.union(&b.ports()?).copied().collect()),
            _ => None,
        }
    }
}

fn dir_matches<T: PartialEq>(dir: Dir, src: T, dst: T, f: impl Fn(T) -> bool) -> bool {
    match dir {
        Dir::Src => f(src),
        Dir::Dst => f(dst),
        Dir::Either => f(src) || f(dst),
    }
}

fn prim_matches(p: &Prim, src: SocketAddr, dst: SocketAddr) -> bool {
    match p {
        Prim::Port(d, port) => dir_matches(*d, src.port(), dst.port(), |x| x == *port),
        Prim::Host(d, host) => dir_matches(*d, src.ip(), dst.ip(), |x| x == *host),
        Prim::Net(d, net) => dir_matches(*d, src.ip(), dst.ip(), |x| net.contains(&x)),
        Prim::Tcp => true, // only TCP is ever captured
        Prim::Ip => src.is_ipv4(),
        Prim::Ip6 => src.is_ipv6(),
    }
}

fn tokenize(text: &str) -> Vec<String> {
    let mut tokens = Vec::new();
    let mut word = String::new();
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '(' | ')' | '!' => {
                flush(&mut word, &mut tokens);
                tokens.push(c.to_string());
            }
            '&' | '|' if chars.peek() == Some(&c) => {
                chars.next();
                flush(&mut word, &mut tokens);
                tokens.push(format!("{c}{c}"));
            }
            c if c.is_whitespace() => flush(&mut word, &mut tokens),
            c => word.push(c),
        }
    }
    flush(&mut word, &mut tokens);
    tokens
}

fn flush(word: &mut String, tokens: &mut Vec<String>) {
    if !word.is_empty() {
        tokens.push(std::mem::take(word));
    }
}

struct Parser {
    tokens: Vec<String>,
    pos: usize,
    /// Qualifiers of the last primitive, for bare values (`port 80 or 443`).
    last: Option<(Dir, String)>,
}

impl Parser {
    fn peek(&self) -> Option<&str> {
        self.tokens.get(self.pos).map(String::as_str)
    }

    fn next(&mut self) -> Option<String> {
        let t = self.tokens.get(self.pos).cloned();
        self.pos += 1;
        t
    }

    fn or(&mut self) -> Result<Filter, FilterError> {
        let mut left = self.and()?;
        while matches!(self.peek(), Some("or" | "||")) {
            self.pos += 1;
            left = Filter::Or(Box::new(left), Box::new(self.and()?));
        }
        Ok(left)
    }

    fn and(&mut self) -> Result<Filter, FilterError> {
        let mut left = self.unary()?;
        while matches!(self.peek(), Some("and" | "&&")) {
            self.pos += 1;
            left = Filter::And(Box::new(left), Box::new(self.unary()?));
        }
        Ok(left)
    }

    fn unary(&mut self) -> Result<Filter, FilterError> {
        match self.peek() {
            Some("not" | "!") => {
                self.pos += 1;
                Ok(Filter::Not(Box::new(self.unary()?)))
            }
            Some("(") => {
                self.pos += 1;
                let f = self.or()?;
                match self.next().as_deref() {
                    Some(")") => Ok(f),
                    _ => Err(FilterError("missing ')'".into())),
                }
            }
            Some(_) => self.primitive(),
            None => Err(FilterError("unexpected end of expression".into())),
        }
    }

    fn primitive(&mut self) -> Result<Filter, FilterError> {
        let first = self.next().unwrap_or_default();
        let (dir, kind) = match first.as_str() {
            "tcp" => return Ok(Filter::Prim(Prim::Tcp)),
            "ip" => return Ok(Filter::Prim(Prim::Ip)),
            "ip6" => return Ok(Filter::Prim(Prim::Ip6)),
            "src" | "dst" => {
                let dir = if first == "src" { Dir::Src } else { Dir::Dst };
                match self.peek() {
                    Some("port" | "host" | "net") => (dir, self.next().unwrap_or_default()),
                    // `src 10.0.0.1` means `src host 10.0.0.1`.
                    _ => (dir, "host".to_owned()),
                }
            }
            "port" | "host" | "net" => (Dir::Either, first.clone()),
            value => {
                // A bare value repeats the last qualifiers.
                let Some((dir, kind)) = self.last.clone() else {
                    return Err(FilterError(format!("unknown token '{value}'")));
                };
                self.pos -= 1;
                (dir, kind)
            }
        };
        let value = self.next().ok_or_else(|| FilterError(format!("'{kind}' needs a value")))?;
        self.last = Some((dir, kind.clone()));
        let prim = match kind.as_str() {
            "port" => Prim::Port(
                dir,
                value.parse().map_err(|_| FilterError(format!("illegal port number '{value}'")))?,
            ),
            "host" => Prim::Host(
                dir,
                value
                    .parse()
                    .map_err(|_| FilterError(format!("illegal host address '{value}'")))?,
            ),
            _ => Prim::Net(dir, parse_net(&value)?),
        };
        Ok(Filter::Prim(prim))
    }
}

fn parse_net(value: &str) -> Result<IpNet, FilterError> {
    value
        .parse::<IpNet>()
        .or_else(|_| value.parse::<IpAddr>().map(IpNet::from))
        .map(|n| n.trunc())
        .map_err(|_| FilterError(format!("illegal network '{value}'")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use mirror_testkit::Conversation;

    fn parse(s: &str) -> Result<Filter, FilterError> {
        Filter::parse(&s.split(' ').map(str::to_owned).collect::<Vec<_>>())
    }

    fn seg(src: &str, dst: &str) -> Segment {
        let mut c = Conversation::new(src.parse().unwrap(), dst.parse().unwrap(), 1, 1);
        c.request(b"x", 10).remove(0)
    }

    #[test]
    fn expressions_select_what_tcpdump_would() {
        let a = seg("10.0.0.1:5000", "10.0.0.2:80");
        let b = seg("[fd00::1]:6000", "[fd00::2]:443");
        let table: &[(&str, bool, bool)] = &[
            ("", true, true),
            ("tcp", true, true),
            ("port 80", true, false),
            ("port 80 or 443", true, true),
            ("src port 5000", true, false),
            ("dst port 5000", false, false),
            ("host 10.0.0.2", true, false),
            ("src host 10.0.0.2", false, false),
            ("dst 10.0.0.2", true, false),
            ("net 10.0.0.0/8", true, false),
            ("src net fd00::/16", false, true),
            ("ip", true, false),
            ("ip6 and port 443", false, true),
            ("not port 80", false, true),
            ("! ( port 80 || port 443 )", false, false),
            ("(port 80 and host 10.0.0.1) or ip6", true, true),
            ("tcp && !ip6", true, false),
        ];
        for (expr, want_a, want_b) in table {
            let f = parse(expr).unwrap_or_else(|e| panic!("{expr}: {e}"));
            assert_eq!((f.matches(&a), f.matches(&b)), (*want_a, *want_b), "{expr}");
        }
    }

    #[test]
    fn parentheses_bind_without_spaces() {
        let f = Filter::parse(&["(port".into(), "80)".into()]).unwrap();
        assert_eq!(f, Filter::Prim(Prim::Port(Dir::Either, 80)));
    }

    #[test]
    fn errors_read_like_tcpdump() {
        for (expr, msg) in [
            ("port", "'port' needs a value"),
            ("port http-ish", "illegal port number"),
            ("host 300.1.1.1", "illegal host address"),
            ("( port 80", "missing ')'"),
            ("port 80 and", "unexpected end"),
            ("frobnicate", "unknown token 'frobnicate'"),
            ("port 80 )", "unexpected ')'"),
        ] {
            let e = parse(expr).unwrap_err().to_string();
            assert!(
                e.starts_with("syntax error in filter expression") && e.contains(msg),
                "{expr}: {e}"
            );
        }
    }

    #[test]
    fn ports_are_pushed_down_when_implied() {
        let ports = |s: &str| parse(s).unwrap().ports().map(|p| p.into_iter().collect::<Vec<_>>());
        assert_eq!(ports("port 80"), Some(vec![80]));
        assert_eq!(ports("port 80 or 443"), Some(vec![80, 443]));
        assert_eq!(ports("host 10.0.0.1 and dst port 8080"), Some(vec![8080]));
        assert_eq!(ports("port 80 or host 10.0.0.1"), None);
        assert_eq!(ports("not port 80"), None);
        assert_eq!(ports(""), None);
    }
}
