#!/usr/bin/env bash
# Builds the agent's OCI image from scratch with buildah: the binary, the shared libraries
# and loader it links (at the paths it asks for) and the CA bundle for https shadows; no base
# image, no shell, nothing pulled. Usage: deploy/image.sh BINARY [NAME] (default
# localhost/mirror:latest); `cargo xtask image` builds the release binary and calls this.
set -euo pipefail
bin=$1
name=${2:-localhost/mirror:latest}
ctr=$(buildah from scratch)
trap 'buildah rm "$ctr" >/dev/null 2>&1 || true' EXIT
buildah copy "$ctr" "$bin" /usr/bin/mirror >/dev/null
for lib in $(ldd "$bin" | grep -o '/[^ ]*'); do
  buildah copy "$ctr" "$(readlink -f "$lib")" "$lib" >/dev/null
done
if [ -f /etc/ssl/certs/ca-certificates.crt ]; then
  buildah copy "$ctr" /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt >/dev/null
fi
buildah config \
  --entrypoint '["/usr/bin/mirror"]' --cmd run \
  --label org.opencontainers.image.title=mirror \
  --label org.opencontainers.image.description="Transparent eBPF traffic mirror (node agent)" \
  "$ctr"
buildah commit -q "$ctr" "$name"
