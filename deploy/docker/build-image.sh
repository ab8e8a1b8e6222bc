#!/bin/sh
# Builds the sov container image from binaries built on this machine, pulling nothing: the
# image is `FROM scratch` with the binaries and the shared libraries they load (rootfs.sh).
# Idempotent and cached: the image is tagged with a hash of its content, and when an image
# with that tag exists, nothing is built.
#
#   cargo build --release --bins && deploy/docker/build-image.sh
#   deploy/docker/build-image.sh --bin-dir target/debug      # the end-to-end tests do this
#
# Options:
#   --bin-dir DIR   where sov-scheduler, sov-agent, sov-model-server and sovctl are
#                   (default: target/release of this repository)
#   --name NAME     image name (default: sov); tags NAME:<content hash> and NAME:local
#
# Prints progress on stderr and the content-hash tag (NAME:<hash>) alone on stdout. Keeps the
# three newest NAME:<hash> images and removes older ones (unless a container uses them), so
# rebuilds after every code change do not fill the disk.
# Needs: docker, ldd, sha256sum, find, sort, stat.
set -eu

repo=$(cd "$(dirname "$0")/../.." && pwd)
bin_dir="$repo/target/release"
name=sov
while [ $# -gt 0 ]; do
    case $1 in
        --bin-dir) bin_dir=${2:?--bin-dir needs a directory}; shift 2 ;;
        --name) name=${2:?--name needs a name}; shift 2 ;;
        -h|--help) sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "build-image.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done

if ! docker info >/dev/null 2>&1; then
    echo "build-image.sh: no Docker engine reachable (is dockerd running, may this user use it?)" >&2
    exit 1
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/sov-image.XXXXXX")
trap 'rm -rf "$work"' EXIT INT TERM
"$repo/deploy/docker/rootfs.sh" "$work/context" "$bin_dir"
cp "$repo/deploy/docker/Dockerfile.local" "$work/context/Dockerfile"

# The content hash covers every path, its type and mode, and every file's bytes, so any change
# of a binary, a library, the passwd file or the Dockerfile gives a new tag.
hash=$(
    cd "$work/context"
    {
        find . -print0 | sort -z | xargs -0 stat -c '%n %F %a'
        find . -type f -print0 | sort -z | xargs -0 sha256sum
    } | sha256sum | cut -c1-16
)
tag="$name:$hash"

if docker image inspect "$tag" >/dev/null 2>&1; then
    echo "image $tag is up to date" >&2
else
    echo "building image $tag from $bin_dir" >&2
    docker build --quiet --tag "$tag" "$work/context" >/dev/null
    echo "built image $tag" >&2
fi
docker tag "$tag" "$name:local"

# Images are listed newest first; hash tags are 16 hex digits.
docker images "$name" --format '{{.Tag}}' | grep -E '^[0-9a-f]{16}$' | tail -n +4 |
    while read -r old; do
        docker rmi "$name:$old" >/dev/null 2>&1 && echo "removed old image $name:$old" >&2 || true
    done
echo "$tag"
