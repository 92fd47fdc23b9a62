#!/usr/bin/env bash
# Demo of `mirror run`: a client, a primary and a shadow, each in its own network namespace,
# joined through the root namespace like pods on a Kubernetes node. The agent runs as the
# node agent does: it follows the primary's veth by name pattern (attached when it appears),
# pins its links (`mirror status` shows them, with the pod's name), and mirrors every
# request to the shadow, rewriting
# `Host: httpbin:8000` to `httpbin-shadow:8000` as Istio does. Each mirrored request is shown
# when the shadow answers; Ctrl-C (or the end of the traffic) prints the summary. The same
# agent compares a candidate build (a changed page) with the primary, a second instance of
# the primary's build telling noise apart, and prints the verdict with the summary. The
# primary and the shadow speak HTTP/1.1 and HTTP/2: one call goes over HTTP/2 (prior
# knowledge), mirrored as an HTTP/2 stream with `:authority` rewritten.
set -euo pipefail
MIRROR=${1:?usage: demo.sh path/to/mirror}
id=$$
CLI=mdemo-c-$id PRI=mdemo-p-$id SHA=mdemo-s-$id
HC=mdc$id HP=mdp$id HS=mds$id
METRICS=$((20000 + id % 20000))
WWW=/tmp/mirror-demo-$id
PIN=/sys/fs/bpf/mirror-demo-$id
cleanup() {
    [[ -n ${AGENT:-} ]] && kill -INT "$AGENT" 2>/dev/null && wait "$AGENT" 2>/dev/null
    for p in ${SERVERS:-}; do kill "$p" 2>/dev/null || true; done
    for ns in "$CLI" "$PRI" "$SHA"; do ip netns del "$ns" 2>/dev/null || true; done
    for l in "$HC" "$HP" "$HS"; do ip link del "$l" 2>/dev/null || true; done
    rm -rf "$WWW"
    [[ -d $PIN ]] && "$MIRROR" cleanup --pin "$PIN" >/dev/null
    return 0
}
trap cleanup EXIT

link() { # namespace, host-side veth, /24 prefix
    ip netns add "$1"
    ip link add "$2" type veth peer name eth0 netns "$1"
    ip addr add "$3.1/24" dev "$2"; ip link set "$2" up
    ip -n "$1" link set lo up; ip -n "$1" link set eth0 up
    ip -n "$1" addr add "$3.2/24" dev eth0; ip -n "$1" route add default via "$3.1"
}
link "$CLI" "$HC" 10.251.1
link "$PRI" "$HP" 10.251.2
link "$SHA" "$HS" 10.251.3
sysctl -qw net.ipv4.ip_forward=1
echo "== client 10.251.1.2 -> node -> primary 10.251.2.2:8000; shadow 10.251.3.2:8000"
echo "   candidate 10.251.3.2:8001 (a changed page), secondary 10.251.3.2:8002 (the primary's build)"

mkdir -p "$WWW/primary" "$WWW/shadow" "$WWW/candidate"
echo "primary" > "$WWW/primary/index.html"; echo "shadow" > "$WWW/shadow/index.html"
echo "primary, version 2" > "$WWW/candidate/index.html"
touch -r "$WWW/primary/index.html" "$WWW/candidate/index.html" # the same Last-Modified
HERE=$(dirname "$0")
for server in "$PRI:8000:primary" "$SHA:8000:shadow" "$SHA:8001:candidate" "$SHA:8002:primary"; do
    IFS=: read -r ns port dir <<<"$server" # files over HTTP/1.1 and HTTP/2 (h2c)
    ip netns exec "$ns" python3 "$HERE/demo_server.py" "$WWW/$dir" "$port" >/dev/null 2>&1 &
    SERVERS="${SERVERS:-} $!"
done

for url in 10.251.2.2:8000 10.251.3.2:8000 10.251.3.2:8001 10.251.3.2:8002; do # all listening?
    for _ in $(seq 100); do
        ip netns exec "$CLI" curl -sf -o /dev/null "http://$url/" && break
        sleep 0.1
    done
done

echo "== mirror run --iface-pattern '$HP' --pin=$PIN --metrics 127.0.0.1:$METRICS \\"
echo "       --port 8000 --shadow http://10.251.3.2:8000 --log-requests \\"
echo "       --compare --candidate http://10.251.3.2:8001 --secondary http://10.251.3.2:8002"
"$MIRROR" run --iface-pattern "$HP" --pin="$PIN" --metrics "127.0.0.1:$METRICS" \
    --port 8000 --shadow http://10.251.3.2:8000 --log-requests \
    --compare --candidate http://10.251.3.2:8001 --secondary http://10.251.3.2:8002 \
    2> >(tee "$WWW/agent.log" | sed -u 's/^/   [agent] /' >&2) &
AGENT=$!
for _ in $(seq 200); do # "ready": its programs attached to the interfaces there are
    grep -q "mirror run: ready" "$WWW/agent.log" 2>/dev/null && break
    kill -0 "$AGENT" 2>/dev/null || { echo "the agent failed to start" >&2; exit 1; }
    sleep 0.05
done

echo "== client: keep-alive requests with Host: httpbin:8000"
ip netns exec "$CLI" curl -s -H "Host: httpbin:8000" \
    http://10.251.2.2:8000/ http://10.251.2.2:8000/index.html http://10.251.2.2:8000/missing >/dev/null
ip netns exec "$CLI" curl -s -o /dev/null -H "Host: httpbin:8000" -d 'hello' \
    http://10.251.2.2:8000/form
for i in 1 2 3; do
    ip netns exec "$CLI" curl -s -o /dev/null -H "Host: httpbin:8000" "http://10.251.2.2:8000/?n=$i"
done
echo "== client: an HTTP/2 call (prior knowledge) with :authority httpbin:8000"
ip netns exec "$CLI" curl -s -o /dev/null --http2-prior-knowledge -H "Host: httpbin:8000" \
    "http://10.251.2.2:8000/index.html?h2=1"
echo "== mirror status --pin $PIN --metrics 127.0.0.1:$METRICS"
sleep 1.1 # the kernel's counters reach the metrics each second
"$MIRROR" status --pin "$PIN" --metrics "127.0.0.1:$METRICS" | sed 's/^/   /'
echo "== stopping the agent (it mirrors everything already captured, then prints its summary)"
kill -INT "$AGENT"; wait "$AGENT" || true; AGENT=
