#!/usr/bin/env bash
# Demo: a client and a server in their own network namespaces, joined through the root
# namespace like pods on a Kubernetes node. The tap sits on the host side of the server's
# veth and prints every captured segment of port 8000 while curl sends a few requests.
set -euo pipefail
MIRROR=${1:?usage: demo.sh path/to/mirror}
id=$$
CLI=mdemo-c-$id SRV=mdemo-s-$id HC=mdc$id HS=mds$id
cleanup() {
    [[ -n ${TAP_PID:-} ]] && kill -INT "$TAP_PID" 2>/dev/null && wait "$TAP_PID" 2>/dev/null
    [[ -n ${SRV_PID:-} ]] && kill "$SRV_PID" 2>/dev/null
    ip netns del "$CLI" 2>/dev/null || true
    ip netns del "$SRV" 2>/dev/null || true
    ip link del "$HC" 2>/dev/null || true
    ip link del "$HS" 2>/dev/null || true
}
trap cleanup EXIT

echo "== topology: $CLI (10.251.1.2) -> node -> $SRV (10.251.2.2:8000), tap on $HS"
ip netns add "$CLI"; ip netns add "$SRV"
ip link add "$HC" type veth peer name eth0 netns "$CLI"
ip link add "$HS" type veth peer name eth0 netns "$SRV"
ip addr add 10.251.1.1/24 dev "$HC"; ip link set "$HC" up
ip addr add 10.251.2.1/24 dev "$HS"; ip link set "$HS" up
for ns in "$CLI" "$SRV"; do ip -n "$ns" link set lo up; ip -n "$ns" link set eth0 up; done
ip -n "$CLI" addr add 10.251.1.2/24 dev eth0; ip -n "$CLI" route add default via 10.251.1.1
ip -n "$SRV" addr add 10.251.2.2/24 dev eth0; ip -n "$SRV" route add default via 10.251.2.1
sysctl -qw net.ipv4.ip_forward=1

mkdir -p /tmp/mirror-demo-$id && echo "hello from the primary" > /tmp/mirror-demo-$id/index.html
ip netns exec "$SRV" python3 -m http.server 8000 --bind 10.251.2.2 \
    --directory /tmp/mirror-demo-$id >/dev/null 2>&1 &
SRV_PID=$!

echo "== mirror tap -i $HS --port 8000"
"$MIRROR" tap -i "$HS" --port 8000 2> >(sed 's/^/   [agent] /' >&2) &
TAP_PID=$!
for _ in $(seq 50); do
    ip netns exec "$CLI" curl -s -o /dev/null http://10.251.2.2:8000/ && break
    sleep 0.1
done
echo "== client: 3 requests on one keep-alive connection, and an upload"
ip netns exec "$CLI" curl -s http://10.251.2.2:8000/ http://10.251.2.2:8000/?a=1 \
    http://10.251.2.2:8000/?b=2 >/dev/null
head -c 100000 /dev/urandom | ip netns exec "$CLI" curl -s -o /dev/null --data-binary @- \
    http://10.251.2.2:8000/upload || true
sleep 0.5
rm -rf /tmp/mirror-demo-$id
echo "== done"
