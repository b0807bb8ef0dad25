#!/usr/bin/env bash
# Container images without a Docker engine: the daemonless twin of deploy/docker/*.Dockerfile.
#
#   images.sh build [NAME..]  static release binaries, then buildah images FROM scratch
#                             (browser-runtime: FROM scratch plus Debian's Chromium and
#                             exactly the shared libraries it loads: browser_rootfs)
#   images.sh push REGISTRY   push them to REGISTRY/newrelic/serverless-<name>:{VERSION,latest}
#                             (TLS verified, except for a loopback registry: tls_verify_for)
#   images.sh test            build, rebuild the images and compare digests, then verify
#   images.sh reproduce       rebuild the images from the same binaries: same digests?
#   images.sh browser-rootfs DIR   only assemble the browser runtime's root filesystem
#                             (the Dockerfile's rootfs stage runs this)
#   images.sh verify          push the built images to a throwaway registry on 127.0.0.1:5000,
#                             pull and inspect them back (entrypoint, user, size), smoke-run
#                             them with podman (a job through sidecar + test-runtime; the
#                             job manager's --help and its exit 64 on a bad config)
#
# Images live in a private containers-storage under .cache/images (vfs driver), so nothing
# touches the system's container storage or services. Needs root (or sudo) for apt and for
# podman/buildah. Environment: IMAGE_TAG (default: the workspace version),
# SOURCE_DATE_EPOCH (default: the last commit's time).
#
# Reproducible: every timestamp (image `created`, history, file times in the layer, the
# `created` label, the SBOM's) is SOURCE_DATE_EPOCH; the binaries are built with
# `cargo auditable` (their crate list embedded in a `.dep-v0` section, the format
# cargo-audit, Trivy and Syft read), BUILD_COMMIT for `--version`, and the checkout and
# cargo home remapped out of panic paths, so another checkout of the commit builds the
# same bytes. Each image carries a CycloneDX SBOM of exactly its binary's crates at
# /usr/share/sbom/<name>.cdx.json (deploy/scripts/sbom.py); a copy stays in
# .cache/images/sbom/.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
root=$(pwd)

TARGET=x86_64-unknown-linux-gnu
NAMES=(job-manager sidecar test-runtime api-runtime browser-runtime)
VERSION=$(sed -n '/^\[workspace.package\]/,/^\[/s/^version *= *"\(.*\)"/\1/p' Cargo.toml)
TAG=${IMAGE_TAG:-$VERSION}
REVISION=$(git rev-parse HEAD 2>/dev/null || echo unknown)
SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || echo 0)}
CREATED=$(date -u -d "@$SOURCE_DATE_EPOCH" +%Y-%m-%dT%H:%M:%SZ)
export SOURCE_DATE_EPOCH
# cargo-auditable, compiled once (~3 min on the shared 2 cores) when absent: no prebuilt
# is reachable from crates.io, PyPI or Debian.
AUDITABLE_VERSION=0.7.7
# The chart's image repositories (values.yaml): `--set global.imageRegistry=REGISTRY` finds them.
repo_of() { echo "newrelic/serverless-$1"; }
# Size goals (bytes, compressed layers as pushed).
declare -A GOAL=([job-manager]=$((25 * 1024 * 1024)) [sidecar]=$((10 * 1024 * 1024)) [api-runtime]=$((10 * 1024 * 1024)))
# Runtimes keep their Dockerfile beside their code (deploy/runtimes/<name>/Dockerfile).
dockerfile_of() {
  if [ -f "deploy/runtimes/$1/Dockerfile" ]; then echo "deploy/runtimes/$1/Dockerfile"; else echo "deploy/docker/$1.Dockerfile"; fi
}

state="$root/.cache/images"
export CONTAINERS_STORAGE_CONF="$state/storage.conf"

log() { echo "images: $*" >&2; }
die() { echo "images: FAIL: $*" >&2; exit 1; }

SUDO=""
[ "$(id -u)" = 0 ] || SUDO=sudo

# Installs only what is missing; a no-op once done.
ensure_apt() {
  local missing=()
  local pkg bin
  for pkg in "$@"; do
    case $pkg in
      docker-registry) bin=docker-registry ;;
      uidmap) bin=newuidmap ;;
      *) bin=$pkg ;;
    esac
    command -v "$bin" >/dev/null || missing+=("$pkg")
  done
  [ ${#missing[@]} -eq 0 ] && return
  log "apt-get install ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

ensure_storage() {
  mkdir -p "$state/storage" "$state/run"
  cat >"$CONTAINERS_STORAGE_CONF" <<EOF
[storage]
driver = "vfs"
graphroot = "$state/storage"
runroot = "$state/run"
EOF
}

# Binaries the workspace actually defines (test-runtime lands with the end-to-end tests).
workspace_bins() {
  cargo metadata --no-deps --format-version 1 |
    python3 -c 'import json,sys; print("\n".join(t["name"] for p in json.load(sys.stdin)["packages"] for t in p["targets"] if "bin" in t["kind"]))'
}

ensure_cargo_auditable() {
  cargo install --list | grep -qx "cargo-auditable v$AUDITABLE_VERSION:" && return
  log "cargo install cargo-auditable $AUDITABLE_VERSION (once per machine)"
  cargo install --locked --quiet cargo-auditable --version "$AUDITABLE_VERSION"
}

build_binaries() {
  local have bins=() name
  have=$(workspace_bins)
  for name in "${NAMES[@]}"; do
    if grep -qx "$name" <<<"$have"; then bins+=(--bin "$name"); else log "no '$name' binary in the workspace: its image is not built"; fi
  done
  ensure_cargo_auditable
  log "cargo auditable build --release --target $TARGET ${bins[*]} (static, commit $REVISION)"
  # --target keeps RUSTFLAGS off build scripts and proc macros, and the output apart
  # from everyone's debug builds in the shared target/.
  BUILD_COMMIT=$REVISION \
    RUSTFLAGS="-C target-feature=+crt-static --remap-path-prefix=$root=/build --remap-path-prefix=${CARGO_HOME:-$HOME/.cargo}=/cargo" \
    cargo auditable build --release --locked --target "$TARGET" "${bins[@]}"
}

binary_of() { echo "$root/target/$TARGET/release/$1"; }

# The browser runtime's root filesystem, from this machine's Debian packages (no base
# image: no registry is reachable, and a distro base would carry a shell, apt and
# hundreds of unused files): /usr/lib/chromium (en-US locale only, no Vulkan debug
# layers), every shared library `ldd` lists for it, its own libraries and NSS's
# dlopen()ed modules, the dynamic loader, fontconfig + DejaVu fonts, the CA bundle, a
# passwd entry for 1001 and a world-writable /tmp. Same layout as
# deploy/runtimes/browser-runtime/Dockerfile.
browser_rootfs() {
  local dir=$1 f lib
  local pkgs=(chromium fonts-dejavu-core fontconfig-config ca-certificates)
  for f in "${pkgs[@]}"; do
    dpkg -s "$f" >/dev/null 2>&1 || { log "apt-get install ${pkgs[*]}"; $SUDO apt-get update -qq; DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >/dev/null; break; }
  done
  rm -rf "$dir" && mkdir -p "$dir"/{tmp,etc,usr/lib,usr/share/fonts/truetype,etc/ssl/certs}
  chmod 1777 "$dir/tmp"
  cp -a /usr/lib/chromium "$dir/usr/lib/"
  find "$dir/usr/lib/chromium/locales" -type f ! -name 'en-US.pak' -delete
  rm -f "$dir"/usr/lib/chromium/libVkLayer_khronos_validation.so* "$dir"/usr/lib/chromium/libVkICD_mock_icd.so* "$dir"/usr/lib/chromium/*.TOC
  rm -rf "$dir/usr/lib/chromium/extensions"
  {
    for f in "$dir"/usr/lib/chromium/chromium "$dir"/usr/lib/chromium/chrome_crashpad_handler "$dir"/usr/lib/chromium/*.so* \
      /usr/lib/x86_64-linux-gnu/nss/*.so /usr/lib/x86_64-linux-gnu/libnss3.so; do
      # Not every file is an ELF object ldd can read: an empty answer, not an error.
      { ldd "$f" 2>/dev/null || true; } | awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\/.*ld-linux/ {print $1}'
    done
    ls /usr/lib/x86_64-linux-gnu/nss/*.so
  } | sort -u | while read -r lib; do
    case $lib in "$dir"/*) continue ;; esac
    cp -L --parents "$lib" "$dir"
  done
  [ -e "$dir/lib64/ld-linux-x86-64.so.2" ] || die "the dynamic loader is missing from the browser rootfs"
  cp -a --parents /etc/fonts /usr/share/fontconfig "$dir"
  cp -a /usr/share/fonts/truetype/dejavu "$dir/usr/share/fonts/truetype/"
  cp -L /etc/ssl/certs/ca-certificates.crt "$dir/etc/ssl/certs/"
  printf 'root:x:0:0::/:/nonexistent\nruntime:x:1001:1001::/tmp:/nonexistent\n' >"$dir/etc/passwd"
  printf 'root:x:0:\nruntime:x:1001:\n' >"$dir/etc/group"
}

built_names() {
  local name
  for name in "${NAMES[@]}"; do [ -x "$(binary_of "$name")" ] && echo "$name"; done
  return 0
}

assert_static() {
  # ldd names each shared library as "lib => path"; a static(-pie) binary has none.
  if ldd "$1" 2>&1 | grep -q '=>'; then die "$1 is dynamically linked: $(ldd "$1" | tr '\n' ' ')"; fi
}

# Mirrors the name's Dockerfile (dockerfile_of): FROM scratch, CA bundle, the binary (0555),
# USER 1001:1001, ENTRYPOINT, OCI labels.
build_image() {
  local name=$1 bin ctr desc image sbom
  bin=$(binary_of "$name")
  assert_static "$bin"
  desc=$(sed -n 's/^      org.opencontainers.image.description="\(.*\)" \\$/\1/p' "$(dockerfile_of "$name")")
  image="localhost/$(repo_of "$name"):$TAG"
  sbom="$state/sbom/$name.cdx.json"
  mkdir -p "$state/sbom"
  deploy/scripts/sbom.py "$bin" "$name" "$TAG" "$REVISION" "$SOURCE_DATE_EPOCH" >"$sbom"
  ctr=$(buildah from scratch)
  if [ "$name" = browser-runtime ]; then
    browser_rootfs "$state/browser-rootfs"
    buildah copy --quiet "$ctr" "$state/browser-rootfs" / >/dev/null
    buildah config --env HOME=/tmp --env TMPDIR=/tmp "$ctr"
  fi
  buildah copy --quiet "$ctr" /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt >/dev/null
  buildah copy --quiet --chmod 0555 "$ctr" "$bin" "/$name" >/dev/null
  buildah copy --quiet --chmod 0444 "$ctr" "$sbom" "/usr/share/sbom/$name.cdx.json" >/dev/null
  buildah config \
    --user 1001:1001 \
    --entrypoint "[\"/$name\"]" \
    --cmd '' \
    --workingdir / \
    --created-by "deploy/scripts/images.sh" \
    --label "org.opencontainers.image.title=$name" \
    --label "org.opencontainers.image.description=$desc" \
    --label "org.opencontainers.image.version=$TAG" \
    --label "org.opencontainers.image.revision=$REVISION" \
    --label "org.opencontainers.image.created=$CREATED" \
    --label "org.opencontainers.image.licenses=Apache-2.0" \
    --label "org.opencontainers.image.source=https://github.com/newrelic/helm-charts" \
    "$ctr"
  buildah commit --quiet --format oci --timestamp "$SOURCE_DATE_EPOCH" --rm "$ctr" "$image" >/dev/null
  buildah tag "$image" "localhost/$(repo_of "$name"):latest"
  log "built $image"
}

cmd_build() {
  # Optional names: build only those images (e.g. `images.sh build browser-runtime`).
  if [ $# -gt 0 ]; then NAMES=("$@"); fi
  ensure_apt buildah
  ensure_storage
  build_binaries
  local name
  for name in $(built_names); do build_image "$name"; done
}

# "<name> <image id> <manifest digest>" of each built image.
image_digests() {
  local name
  for name in $(built_names); do
    # One row per tag of the image: the same ID and digest twice.
    echo "$name $(buildah images --no-trunc --format '{{.ID}} {{.Digest}}' "localhost/$(repo_of "$name"):$TAG" | sort -u | tr '\n' ' ')"
  done
}

# Two image builds of one commit must give the same digests: remove the images, assemble
# them again from the same binaries, compare.
cmd_reproduce() {
  ensure_apt buildah
  ensure_storage
  local before after name
  before=$(image_digests)
  [ -n "$before" ] || die "no images to rebuild: run images.sh build first"
  for name in $(built_names); do
    buildah rmi -f "localhost/$(repo_of "$name"):$TAG" "localhost/$(repo_of "$name"):latest" >/dev/null
    build_image "$name"
  done
  after=$(image_digests)
  [ "$before" = "$after" ] || die "a second build of the same commit gave other digests:"$'\n'"$before"$'\n'"vs"$'\n'"$after"
  log "reproducible: a second build gave the same digests (SOURCE_DATE_EPOCH=$SOURCE_DATE_EPOCH):"
  while read -r name id digest; do log "  $name: image $id, manifest $digest"; done <<<"$after"
}

# --tls-verify for a registry: only a loopback registry (127.0.0.1, localhost, [::1],
# with or without a port: the throwaway one `make image-test` starts) may skip TLS
# verification; every other registry is verified, so a push to a real registry can
# never be intercepted. Tested by deploy/tests/test_images_script.py.
tls_verify_for() {
  if [[ $1 =~ ^(127\.0\.0\.1|localhost|\[::1\])(:[0-9]{1,5})?$ ]]; then echo false; else echo true; fi
}

cmd_push() {
  local registry=${1:?usage: images.sh push REGISTRY}
  ensure_apt buildah
  ensure_storage
  local name tag verify
  verify=$(tls_verify_for "$registry")
  for name in $(built_names); do
    for tag in "$TAG" latest; do
      buildah push --quiet --tls-verify="$verify" "localhost/$(repo_of "$name"):$TAG" "docker://$registry/$(repo_of "$name"):$tag"
    done
    log "pushed $registry/$(repo_of "$name"):{$TAG,latest}"
  done
}

# --- test ------------------------------------------------------------------------------

tmp=""
registry_pid=""
cleanup() {
  # Runs on EXIT: must not change the script's status (a killed registry's `wait` is 143).
  set +e
  if [ -n "${sidecar_ctr:-}" ]; then podman rm -f "$sidecar_ctr" >/dev/null 2>&1; fi
  if [ -n "${upstream_pid:-}" ]; then kill "$upstream_pid" 2>/dev/null; fi
  if [ -n "${jm_pid:-}" ]; then kill "$jm_pid" 2>/dev/null; fi
  if [ -n "$registry_pid" ]; then kill "$registry_pid" 2>/dev/null; wait "$registry_pid" 2>/dev/null; fi
  if [ -n "$tmp" ]; then rm -rf "$tmp"; fi
}

wait_http() { # url, what: polls a readiness endpoint (no fixed sleeps)
  local i
  for i in $(seq 1 100); do
    curl -fsS -o /dev/null "$1" 2>/dev/null && return 0
    sleep 0.1
  done
  die "$2 did not become ready at $1"
}

start_registry() {
  local addr=127.0.0.1:5000
  if curl -s -o /dev/null "http://$addr/v2/" 2>/dev/null; then die "something already listens on $addr"; fi
  mkdir -p "$tmp/registry"
  cat >"$tmp/registry.yml" <<EOF
version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: $tmp/registry
  delete:
    enabled: true
http:
  addr: $addr
EOF
  docker-registry serve "$tmp/registry.yml" >"$tmp/registry.log" 2>&1 &
  registry_pid=$!
  wait_http "http://$addr/v2/" "docker-registry"
  log "registry on $addr (pid $registry_pid)"
}

# Entrypoint, user and compressed size of a pushed image, read back from the registry.
inspect_image() {
  local name=$1 ref config raw size
  ref="docker://127.0.0.1:5000/$(repo_of "$name"):$TAG"
  config=$(skopeo inspect --tls-verify=false --config "$ref")
  raw=$(skopeo inspect --tls-verify=false --raw "$ref")
  python3 - "$name" "$config" "$raw" "${GOAL[$name]:-0}" "$tmp/sizes" "$CREATED" <<'EOF'
import json, sys
from datetime import datetime
name, config, raw, goal, sizes = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
created = sys.argv[6]
cfg = config["config"]
# Reproducible: the image's and its history's times are the last commit's, not the build's.
when = lambda s: datetime.fromisoformat(s.replace("Z", "+00:00"))
assert when(config["created"]) == when(created), f"{name}: created {config['created']}, want {created}"
assert all(when(h["created"]) == when(created) for h in config.get("history", [])), f"{name}: history {config.get('history')}"
assert (cfg.get("Labels") or {}).get("org.opencontainers.image.created") == created, f"{name}: created label"

assert cfg.get("Entrypoint") == [f"/{name}"], f"{name}: entrypoint {cfg.get('Entrypoint')}"
assert cfg.get("User") == "1001:1001", f"{name}: user {cfg.get('User')}"
assert not cfg.get("Cmd"), f"{name}: unexpected cmd {cfg.get('Cmd')}"
labels = cfg.get("Labels") or {}
for key in ("org.opencontainers.image.title", "org.opencontainers.image.version", "org.opencontainers.image.source"):
    assert labels.get(key), f"{name}: label {key} missing"
# One layer: buildah commits the CA bundle and the binary together (the Dockerfile's two COPYs make two).
assert len(raw["layers"]) == 1, f"{name}: expected 1 layer, got {len(raw['layers'])}"
size = raw["config"]["size"] + sum(layer["size"] for layer in raw["layers"])
verdict = "n/a" if not goal else ("ok" if size <= goal else "OVER GOAL")
print(f"images: {name}: entrypoint {cfg['Entrypoint']}, user {cfg['User']}, {size / 1e6:.2f} MB ({size} bytes) compressed; goal {goal / 1048576:.0f} MiB: {verdict}" if goal else
      f"images: {name}: entrypoint {cfg['Entrypoint']}, user {cfg['User']}, {size / 1e6:.2f} MB ({size} bytes) compressed", file=sys.stderr)
with open(sizes, "a") as f:
    f.write(f"{name} {size}\n")
EOF
}

# The SBOM inside a pulled image: CycloneDX for this binary, every crate with a licence,
# and none of the crates that cannot be in it (dev-only, or only in another binary).
check_sbom() {
  local name=$1 ctr
  ctr=$(podman create "127.0.0.1:5000/$(repo_of "$name"):$TAG")
  podman cp "$ctr:/usr/share/sbom/$name.cdx.json" "$tmp/$name.cdx.json"
  podman rm "$ctr" >/dev/null
  python3 - "$name" "$tmp/$name.cdx.json" "$CREATED" <<'EOF' || die "$name: bad SBOM in the image"
import json, sys
name, path, created = sys.argv[1:]
bom = json.load(open(path))
assert bom["bomFormat"] == "CycloneDX" and bom["specVersion"] == "1.5", bom.get("specVersion")
assert bom["metadata"]["component"]["name"] == name, bom["metadata"]["component"]
assert bom["metadata"]["timestamp"] == created, (bom["metadata"]["timestamp"], created)
crates = {c["name"] for c in bom["components"]}
assert {"tokio", "common"} <= crates, f"{name}: {sorted(crates)}"
never = {"serde_derive", "syn", "proc-macro2"}  # build time only
if name in ("job-manager", "sidecar"):
    never.add("tempfile")  # their dev-dependency (test-runtime's package, integration-tests, uses it)
assert not crates & never, f"{name}: {sorted(crates & never)} cannot be in the binary"
if name == "sidecar":
    assert not any(c.startswith("kube") or c == "k8s-openapi" for c in crates), "sidecar SBOM lists kube crates"
missing = [c["name"] for c in bom["components"] if not c.get("licenses")]
assert not missing, f"{name}: no licence for {missing}"
print(f"images: {name}: SBOM /usr/share/sbom/{name}.cdx.json lists {len(crates)} crates", file=sys.stderr)
EOF
}

podman_env() {
  # Podman in this environment: runc, cgroupfs, explicit ulimits; a private storage for
  # what is pulled back, so the test proves the registry round trip.
  cat >"$tmp/containers.conf" <<'EOF'
[containers]
default_ulimits = ["nofile=4096:4096", "nproc=4096:4096"]
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
EOF
  mkdir -p "$tmp/pulled/storage" "$tmp/pulled/run"
  cat >"$tmp/pulled/storage.conf" <<EOF
[storage]
driver = "vfs"
graphroot = "$tmp/pulled/storage"
runroot = "$tmp/pulled/run"
EOF
  export CONTAINERS_CONF="$tmp/containers.conf"
  export CONTAINERS_STORAGE_CONF="$tmp/pulled/storage.conf"
}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# One ephemeral job through the real images, as a pod would run it: the sidecar container
# (read-only, 1001:1001, job directory mounted read-only) serves the job to the
# test-runtime container, which fetches a page from an upstream through the sidecar's
# proxy and posts its result; the sidecar delivers it to a stand-in job manager with the
# internal API key and the job token.
smoke_job_flow() {
  local sidecar_image=$1 runtime_image=$2 runtime=${3:-test-runtime} payload port admin up_port jm_port host_ip i
  port=$(free_port); admin=$(free_port); up_port=$(free_port); jm_port=$(free_port)
  # The upstream sits on the host's first non-loopback address, allowed by --allow-cidr
  # for exactly that address: a build host's address may be in a range the sidecar
  # refuses by default (192.0.2.0/24 documentation addresses on some CI machines).
  host_ip=$(hostname -I | awk '{print $1}')
  [ -n "$host_ip" ] || die "no non-loopback address for the smoke upstream"
  mkdir -p "$tmp/www" && echo "hello through the sidecar" >"$tmp/www/index.html"
  python3 -m http.server "$up_port" --bind "$host_ip" --directory "$tmp/www" >/dev/null 2>&1 &
  upstream_pid=$!
  python3 - "$jm_port" "$tmp/delivered.json" <<'PY' >"$tmp/fake-jm.log" 2>&1 &
import http.server, json, sys
port, out = int(sys.argv[1]), sys.argv[2]
class JobManager(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # readiness of this stand-in
        self.send_response(200); self.end_headers()
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", 0)))
        ok = (self.path == "/internal/v1/jobs/smoke-1/result"
              and self.headers.get("x-internal-api-key") == "smoke-internal-key"
              and self.headers.get("x-job-token") == "smoke-token")
        with open(out, "w") as f:
            json.dump({"ok": ok, "path": self.path, "body": json.loads(body or b"null")}, f)
        self.send_response(204 if ok else 401); self.end_headers()
http.server.HTTPServer(("127.0.0.1", port), JobManager).serve_forever()
PY
  jm_pid=$!
  wait_http "http://$host_ip:$up_port/" "smoke upstream"
  wait_http "http://127.0.0.1:$jm_port/" "stand-in job manager"
  mkdir -p "$tmp/job"
  rm -f "$tmp/delivered.json"
  case $runtime in
    # The API runtime runs a script; its console (with the page) is in the result.
    api-runtime) payload=$(printf '{"script":"const r = await $http.get(\x27http://%s:%s/index.html\x27);\\nconsole.log(r.body);\\nassert.equal(r.statusCode, 200);"}' "$host_ip" "$up_port") ;;
    # The browser runtime: Chromium in the image loads the page; the script logs its text.
    browser-runtime) payload=$(printf '{"type":"scripted","script":"await $browser.get(\x27http://%s:%s/index.html\x27);\\nconsole.log(await (await $browser.findElement($driver.By.tagName(\x27body\x27))).getText());"}' "$host_ip" "$up_port") ;;
    *) payload=$(printf '{"action":"fetch","url":"http://%s:%s/index.html","expectStatus":200}' "$host_ip" "$up_port") ;;
  esac
  printf '{"id":"smoke-1","runtime_type":"%s","timeout_secs":30,"payload":%s}' "$runtime" "$payload" >"$tmp/job/job.json"
  printf 'smoke-token' >"$tmp/job/token"
  chmod 0755 "$tmp/job" && chmod 0644 "$tmp/job/job.json" "$tmp/job/token"
  sidecar_ctr=$(podman run -d --network host --read-only --cap-drop ALL --security-opt no-new-privileges \
    -v "$tmp/job:/var/run/job:ro" --tmpfs /var/spool/sidecar:rw,mode=1777 \
    -e SIDECAR_JOB_DIR=/var/run/job -e SIDECAR_SPOOL_DIR=/var/spool/sidecar \
    -e "SIDECAR_JOB_MANAGER_URL=http://127.0.0.1:$jm_port" -e SIDECAR_INTERNAL_API_KEY=smoke-internal-key \
    "$sidecar_image" --listen "127.0.0.1:$port" --admin-listen "127.0.0.1:$admin" --allow-cidr "$host_ip/32")
  wait_http "http://127.0.0.1:$admin/readyz" "sidecar container"
  [ "$(podman inspect -f '{{.Config.User}}' "$sidecar_ctr")" = "1001:1001" ] || die "sidecar does not run as 1001:1001"
  # /tmp as a pod gives it (an emptyDir): the browser runtime keeps Chromium's profile there.
  podman run --rm --network host --read-only --tmpfs /tmp:rw,mode=1777 --cap-drop ALL --security-opt no-new-privileges \
    -e "JOB_API_URL=http://127.0.0.1:$port" -e "HTTP_PROXY=http://127.0.0.1:$port" -e "HTTPS_PROXY=http://127.0.0.1:$port" \
    "$runtime_image" >"$tmp/runtime.log" 2>&1 || die "$runtime container failed: $(tail -5 "$tmp/runtime.log")"
  for i in $(seq 1 100); do [ -s "$tmp/delivered.json" ] && break; sleep 0.1; done
  [ -s "$tmp/delivered.json" ] || die "the sidecar delivered no result: $(podman logs "$sidecar_ctr" 2>&1 | tail -5)"
  python3 - "$tmp/delivered.json" <<'PY' || die "unexpected delivery: $(cat "$tmp/delivered.json")"
import json, sys
d = json.load(open(sys.argv[1]))
assert d["ok"], d
assert "succeeded" in json.dumps(d["body"]), d
assert "hello through the sidecar" in json.dumps(d["body"]), d
PY
  podman rm -f "$sidecar_ctr" >/dev/null; sidecar_ctr=""
  kill "$upstream_pid" "$jm_pid"; upstream_pid=""; jm_pid=""
  log "sidecar + $runtime images: a job ran read-only as 1001:1001, fetched through the proxy, and its result reached the job manager with key and token"
}

smoke_job_manager() {
  local image=$1 out code
  out=$(podman run --rm --network none --read-only "$image" --help) || die "job-manager --help failed"
  grep -qi "usage" <<<"$out" || die "job-manager --help printed no usage: $out"
  # --version names the commit the image says it was built from.
  local revision
  revision=$(podman inspect -f '{{index .Labels "org.opencontainers.image.revision"}}' "$image")
  out=$(podman run --rm --network none --read-only "$image" --version) || die "job-manager --version failed"
  grep -q "^job-manager $VERSION (commit $revision, rustc " <<<"$out" || die "job-manager --version: $out (image revision $revision)"
  printf 'checkTimeout: 0\n' >"$tmp/bad-config.yaml"
  set +e
  out=$(podman run --rm --network none --read-only -v "$tmp/bad-config.yaml:/config/bad.yaml:ro" \
    -e JM_CONFIG_FILE=/config/bad.yaml "$image" 2>&1)
  code=$?
  set -e
  [ "$code" = 64 ] || die "job-manager with checkTimeout 0 exited $code, want 64: $out"
  grep -q "checkTimeout" <<<"$out" || die "job-manager did not name the bad setting: $out"
  log "job-manager image: --help works, --version names commit ${revision:0:12}; a bad config exits 64 naming checkTimeout"
}

# The registry round trip and smoke runs, for images already built (`images.sh build`).
cmd_verify() {
  ensure_apt buildah skopeo docker-registry podman runc uidmap curl
  ensure_storage
  tmp=$(mktemp -d)
  trap cleanup EXIT
  start_registry
  cmd_push 127.0.0.1:5000
  local name
  for name in $(built_names); do inspect_image "$name"; done
  podman_env
  for name in $(built_names); do
    podman pull --quiet --tls-verify=false "127.0.0.1:5000/$(repo_of "$name"):$TAG" >/dev/null
  done
  for name in $(built_names); do check_sbom "$name"; done
  smoke_job_flow "127.0.0.1:5000/$(repo_of sidecar):$TAG" "127.0.0.1:5000/$(repo_of test-runtime):$TAG"
  if [ -x "$(binary_of api-runtime)" ]; then
    smoke_job_flow "127.0.0.1:5000/$(repo_of sidecar):$TAG" "127.0.0.1:5000/$(repo_of api-runtime):$TAG" api-runtime
  fi
  if [ -x "$(binary_of browser-runtime)" ]; then
    smoke_job_flow "127.0.0.1:5000/$(repo_of sidecar):$TAG" "127.0.0.1:5000/$(repo_of browser-runtime):$TAG" browser-runtime
  fi
  smoke_job_manager "127.0.0.1:5000/$(repo_of job-manager):$TAG"
  cp "$tmp/sizes" "$state/sizes.txt"
  log "ok: sizes in $state/sizes.txt"
}

cmd_test() {
  cmd_build
  cmd_reproduce
  cmd_verify
}

# Sourced (tests): define the functions only.
[[ ${BASH_SOURCE[0]} == "$0" ]] || return 0

case ${1:-} in
  build) shift; cmd_build "$@" ;;
  push) shift; cmd_push "$@" ;;
  test) cmd_test ;;
  verify) cmd_verify ;;
  reproduce) cmd_reproduce ;;
  browser-rootfs) browser_rootfs "${2:?usage: images.sh browser-rootfs DIR}" ;;
  *) echo "usage: $0 build | push REGISTRY | test | verify | reproduce | browser-rootfs DIR" >&2; exit 2 ;;
esac
