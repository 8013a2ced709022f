#!/usr/bin/env bash
# Builds pullahead's container image as an OCI image layout, with no
# container daemon: the `dist` binary, the shared libraries `ldd` says it
# loads (with the dynamic loader), Debian's CA bundle, and nothing else (no
# shell, no package manager). The image runs as 65532:65532 with entrypoint
# /pullahead and needs no writable path, so a read-only root works.
#
# Usage: deploy/image/build.sh OUT_DIR
#   OUT_DIR            absent, empty, or an earlier layout (replaced)
#   PULLAHEAD_BINARY   use this binary instead of `cargo build --profile dist`
#   PULLAHEAD_CA_BUNDLE  CA certificates (default: Debian's ca-certificates)
#   CARGO              cargo to build with (default: cargo)
#
# The result is byte-for-byte reproducible for a given binary and host
# libraries: files sorted, mtime 0, owner 0:0, gzip without name or time.
# Push it with e.g. `skopeo copy oci:OUT_DIR:VERSION docker://HOST/pullahead:VERSION`
# (docs/operations.md). Needs only bash, coreutils, tar, gzip and ldd.
set -euo pipefail
export LC_ALL=C

die() {
  echo "build.sh: $*" >&2
  exit 1
}

[ $# -eq 1 ] || die "usage: deploy/image/build.sh OUT_DIR"
out=$1
repo=$(cd "$(dirname "$0")/../.." && pwd)
ca=${PULLAHEAD_CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}
for tool in tar gzip sha256sum ldd stat; do
  command -v "$tool" >/dev/null || die "$tool not found (it comes with Debian's coreutils, tar, gzip and libc-bin)"
done
[ -r "$ca" ] || die "no CA bundle at $ca: apt-get install ca-certificates (or set PULLAHEAD_CA_BUNDLE)"

# The version from the [package] table of Cargo.toml, the tag of the image.
version=$(awk '
  /^\[/ { in_pkg = ($0 == "[package]") }
  in_pkg && /^version *=/ { gsub(/^version *= *"|".*$/, ""); print; exit }
' "$repo/Cargo.toml")
[ -n "$version" ] || die "no [package] version in $repo/Cargo.toml"

if [ -n "${PULLAHEAD_BINARY:-}" ]; then
  bin=$PULLAHEAD_BINARY
  [ -x "$bin" ] || die "PULLAHEAD_BINARY=$bin is not an executable file"
else
  cargo=${CARGO:-cargo}
  command -v "$cargo" >/dev/null || die "cargo not found: install Rust (rustup) or set PULLAHEAD_BINARY"
  echo "== cargo build --profile dist" >&2
  start=$(date +%s)
  (cd "$repo" && "$cargo" build --profile dist --locked --bin pullahead)
  echo "== built in $(($(date +%s) - start)) s" >&2
  target=$(cd "$repo" && "$cargo" metadata --no-deps --format-version 1 |
    sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
  bin=${target:-$repo/target}/dist/pullahead
  [ -x "$bin" ] || die "cargo built no $bin"
fi

# The binary must be the crate at this version: a stale PULLAHEAD_BINARY
# would otherwise ship under the wrong tag.
said=$("$bin" --version) || die "$bin --version failed"
[ "$said" = "pullahead $version" ] || die "$bin says \"$said\", Cargo.toml says $version"

case $(uname -m) in
  x86_64) arch=amd64 ;;
  aarch64) arch=arm64 ;;
  *) die "unsupported machine $(uname -m)" ;;
esac

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
root=$work/root
mkdir -p "$root"

# Every library the loader maps at start, at the path it finds it under,
# plus the loader itself (the line with no "=>"). A library that cannot be
# found would make the image fail at exec, so it fails the build here.
ldd_out=$(ldd "$bin" 2>&1) || die "ldd $bin failed: $ldd_out"
if grep -q 'not found' <<<"$ldd_out"; then
  die "$bin needs libraries this machine lacks:"$'\n'"$ldd_out"
fi
libs=$(awk '
  $2 == "=>" && $3 ~ /^\// { print $3; next }
  $1 ~ /^\// { print $1 }
' <<<"$ldd_out" | sort -u)
[ -n "$libs" ] || die "ldd found no libraries or loader for $bin; a static binary needs no build.sh changes, but check: $ldd_out"
interp=""
for lib in $libs; do
  mkdir -p "$root$(dirname "$lib")"
  # -L: the image gets the file a symlink names, under the name the loader asks for.
  cp -L "$lib" "$root$lib"
  chmod 0644 "$root$lib"
  case $lib in */ld-linux*) interp=$lib ;; esac
done
[ -n "$interp" ] || die "no dynamic loader in ldd's output for $bin: $ldd_out"
chmod 0755 "$root$interp"

cp "$bin" "$root/pullahead"
chmod 0755 "$root/pullahead"
mkdir -p "$root/etc/ssl/certs"
cp -L "$ca" "$root/etc/ssl/certs/ca-certificates.crt"
chmod 0644 "$root/etc/ssl/certs/ca-certificates.crt"
find "$root" -type d -exec chmod 0755 {} +

# sha256 of a file, hex only.
sum() { sha256sum "$1" | cut -d' ' -f1; }
size() { stat -c %s "$1"; }

blobs=$work/blobs/sha256
mkdir -p "$blobs"
tops=$(cd "$root" && find . -mindepth 1 -maxdepth 1 -printf '%P\n' | sort)
# shellcheck disable=SC2086 # one word per top-level entry
tar --create --file="$work/layer.tar" --directory="$root" --format=gnu \
  --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner \
  --no-acls --no-xattrs --no-selinux $tops
diff_id=$(sum "$work/layer.tar")
gzip -9 -n <"$work/layer.tar" >"$work/layer.tar.gz"
layer=$(sum "$work/layer.tar.gz")
layer_size=$(size "$work/layer.tar.gz")
mv "$work/layer.tar.gz" "$blobs/$layer"

# SSL_CERT_FILE points TLS clients at the bundle without probing paths.
printf '%s' "{\"created\":\"1970-01-01T00:00:00Z\",\"architecture\":\"$arch\",\"os\":\"linux\",\
\"config\":{\"User\":\"65532:65532\",\"Entrypoint\":[\"/pullahead\"],\"WorkingDir\":\"/\",\
\"Env\":[\"SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt\"],\
\"Labels\":{\"org.opencontainers.image.title\":\"pullahead\",\"org.opencontainers.image.version\":\"$version\"}},\
\"rootfs\":{\"type\":\"layers\",\"diff_ids\":[\"sha256:$diff_id\"]},\
\"history\":[{\"created\":\"1970-01-01T00:00:00Z\",\"created_by\":\"deploy/image/build.sh\"}]}" >"$work/config.json"
config=$(sum "$work/config.json")
config_size=$(size "$work/config.json")
mv "$work/config.json" "$blobs/$config"

printf '%s' "{\"schemaVersion\":2,\"mediaType\":\"application/vnd.oci.image.manifest.v1+json\",\
\"config\":{\"mediaType\":\"application/vnd.oci.image.config.v1+json\",\"digest\":\"sha256:$config\",\"size\":$config_size},\
\"layers\":[{\"mediaType\":\"application/vnd.oci.image.layer.v1.tar+gzip\",\"digest\":\"sha256:$layer\",\"size\":$layer_size}],\
\"annotations\":{\"org.opencontainers.image.version\":\"$version\"}}" >"$work/manifest.json"
manifest=$(sum "$work/manifest.json")
manifest_size=$(size "$work/manifest.json")
mv "$work/manifest.json" "$blobs/$manifest"

if [ -e "$out" ] && [ -n "$(ls -A "$out")" ]; then
  [ -f "$out/oci-layout" ] || die "$out is not empty and holds no OCI layout; refusing to overwrite it"
  rm -rf "$out/blobs" "$out/index.json" "$out/oci-layout"
fi
mkdir -p "$out/blobs"
mv "$blobs" "$out/blobs/sha256"
printf '%s' '{"imageLayoutVersion":"1.0.0"}' >"$out/oci-layout"
# The ref.name annotation is the tag under which skopeo, umoci and
# `ctr import` find the image in the layout.
printf '%s' "{\"schemaVersion\":2,\"mediaType\":\"application/vnd.oci.image.index.v1+json\",\
\"manifests\":[{\"mediaType\":\"application/vnd.oci.image.manifest.v1+json\",\"digest\":\"sha256:$manifest\",\"size\":$manifest_size,\
\"platform\":{\"architecture\":\"$arch\",\"os\":\"linux\"},\
\"annotations\":{\"org.opencontainers.image.ref.name\":\"$version\"}}]}" >"$out/index.json"

echo "image pullahead:$version ($arch) in $out" >&2
echo "  manifest sha256:$manifest" >&2
echo "  binary $(size "$bin") bytes; layer $(size "$work/layer.tar") bytes, $layer_size gzipped" >&2
echo "  files:" $(cd "$root" && find . -type f -printf '/%P\n' | sort) >&2
