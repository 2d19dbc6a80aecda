#!/usr/bin/env bash
# Fetch the SuperTux game music (OGG, CC-BY-SA / GPL, Debian package `supertux-data`) into
# data/external/supertux/ as a small real-music folder for AudioFolder.
# The package is only downloaded and unpacked (dpkg -x), never installed. The destination is
# gitignored: never commit audio.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dest="$(realpath -m "${1:-$repo_root/data/external/supertux}")"  # absolute: the script cds below
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

cd "$tmp"
if ! apt-get download supertux-data 2>/dev/null; then
    echo "apt-get download failed; running apt-get update and retrying" >&2
    apt-get update -qq
    if ! apt-get download supertux-data; then
        echo "package supertux-data not found; candidates:" >&2
        apt-cache search supertux >&2 || true
        exit 1
    fi
fi

dpkg -x supertux-data_*.deb unpacked
mkdir -p "$dest"
music_dir="$(find unpacked -type d -name music | head -n 1)"
if [ -z "$music_dir" ]; then
    echo "no music/ folder found in supertux-data" >&2
    exit 1
fi
# keep the sub-folders (forest/, castle/, ...) so that equal file names cannot collide
n=0
while IFS= read -r -d '' f; do
    mkdir -p "$dest/$(dirname "$f")"
    cp "$music_dir/$f" "$dest/$f"
    n=$((n + 1))
done < <(cd "$music_dir" && find . -type f -iname '*.ogg' -printf '%P\0')

if [ "$n" -eq 0 ]; then
    echo "no OGG files in the music/ folder of supertux-data" >&2
    exit 1
fi
echo "copied $n music files to $dest ($(du -sh "$dest" | cut -f1))"
