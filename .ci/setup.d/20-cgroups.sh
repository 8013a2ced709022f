#!/usr/bin/env bash
# Makes sure a cgroup hierarchy is mounted, because runc (behind `ctr run` in
# tests/image.rs) refuses to create a container without one ("no cgroup mount
# found in mountinfo"). Machines that boot normally have it; a chroot or a
# bare container may not. The controllers are mounted as the kernel already
# binds them: cgroup v1 per controller when the host uses v1 or hybrid, else
# the unified cgroup2 hierarchy. Idempotent: nothing happens when any cgroup
# filesystem is mounted.
set -euo pipefail
if grep -qE ' - cgroup2? ' /proc/self/mountinfo; then
  exit 0
fi
root=/sys/fs/cgroup
mkdir -p "$root" 2>/dev/null || true
v1=$(awk 'NR > 1 && $2 != 0 && $4 == 1 { print $1 }' /proc/cgroups)
if [ -z "$v1" ]; then
  mount -t cgroup2 cgroup2 "$root"
  echo "20-cgroups.sh: mounted cgroup2 at $root" >&2
  exit 0
fi
mount -t tmpfs -o mode=755 tmpfs "$root"
for c in $v1; do
  mkdir -p "$root/$c"
  mount -t cgroup -o "$c" cgroup "$root/$c"
done
mkdir -p "$root/unified"
mount -t cgroup2 cgroup2 "$root/unified" 2>/dev/null || true
echo "20-cgroups.sh: mounted cgroup v1 controllers ($(echo $v1)) at $root" >&2
