#!/bin/sh
# Assembles the files of the sov container image from built binaries, for a `FROM scratch`
# image: the four sov binaries, exactly the shared libraries `ldd` says they load (and the
# dynamic loader), a passwd/group pair naming the non-root user `sov` (uid/gid 10001), and the
# state directories that user writes.
#
#   deploy/docker/rootfs.sh OUT_DIR BIN_DIR
#
# Writes OUT_DIR/rootfs (files owned by root in the image) and OUT_DIR/state (the directories
# the image must give to uid 10001: /var/lib/sov, /var/lib/sov-agent). OUT_DIR must not exist.
# Used by build-image.sh (images built here, from the host's binaries) and by the Dockerfile's
# build stage (images built elsewhere, from source), so both images have the same layout.
set -eu

out=${1:?usage: rootfs.sh OUT_DIR BIN_DIR}
bin_dir=${2:?usage: rootfs.sh OUT_DIR BIN_DIR}
binaries="sov-scheduler sov-agent sov-model-server sovctl"

if [ -e "$out" ]; then
    echo "rootfs.sh: $out already exists; give a new directory" >&2
    exit 1
fi
for b in $binaries; do
    if [ ! -x "$bin_dir/$b" ]; then
        echo "rootfs.sh: $bin_dir/$b not found; build it first (cargo build --release --bins)" >&2
        exit 1
    fi
done

root="$out/rootfs"
mkdir -p "$root/usr/local/bin" "$root/etc/sov" "$root/tmp" \
    "$out/state/var/lib/sov" "$out/state/var/lib/sov-agent"
chmod 1777 "$root/tmp"
for b in $binaries; do
    cp "$bin_dir/$b" "$root/usr/local/bin/$b"
done

# Every library by the path the loader will look for it at (ldd prints "name => /path (addr)"
# for libraries and "/path (addr)" for the loader itself; linux-vdso has no file).
libraries=$(for b in $binaries; do ldd "$bin_dir/$b"; done |
    awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }' | sort -u)
if [ -z "$libraries" ]; then
    echo "rootfs.sh: ldd found no shared libraries; are these dynamically linked Linux binaries?" >&2
    exit 1
fi
for lib in $libraries; do
    mkdir -p "$root$(dirname "$lib")"
    cp -L "$lib" "$root$lib"
done

cat > "$root/etc/passwd" <<'PASSWD'
root:x:0:0:root:/root:/sbin/nologin
sov:x:10001:10001:sov scheduler and agent:/var/lib/sov:/sbin/nologin
PASSWD
cat > "$root/etc/group" <<'GROUP'
root:x:0:
sov:x:10001:
GROUP
# Names resolve from /etc/hosts, then DNS (Docker mounts both /etc/hosts and /etc/resolv.conf).
echo 'hosts: files dns' > "$root/etc/nsswitch.conf"
