#!/usr/bin/env bash
# Builds the English text corpus from Debian packages and encodes it into token shards.
#
#   scripts/get_corpus.sh            full corpus -> data/shards/corpus_{train,val}_*.bin
#   scripts/get_corpus.sh --small    CPU demo slice (Python's documentation, ~3 M tokens)
#                                    -> data/shards/demo_{train,val}_*.bin
#   scripts/get_corpus.sh --text-only   stop after writing corpus/text/*.txt
#
# What goes in (docs/DATA.md lists sizes): manuals and references that Debian ships as text or
# HTML (Python, Linux kernel, Git, Perl, Rust, Java SE, GHC, Erlang, Boost, Qt, Django,
# PostgreSQL, SQLite, pandas, SciPy, Vim, zsh, ...) and English
# dictionaries (GCIDE, FOLDOC, Jargon File, Devil's Dictionary). Packages are fetched with
# `apt-get download` (no installation) into corpus/debs/ and unpacked under corpus/pkgs/.
# Each text source becomes corpus/text/NAME.txt, its documents separated by the ASCII record
# separator (0x1E): an HTML manual gives one document per directory of pages (a book's chapters
# stay together, so documents are long), a text/rst/pod source one document per file.
# Everything here is git-ignored; re-running skips downloads already done.
# Needs: apt-get (Debian 12 main), dpkg-deb, perl (pod2text), and ./prepare (built by make).
set -euo pipefail
cd "$(dirname "$0")/.."
mode=full
case "${1:-}" in
    "") ;;
    --small) mode=small ;;
    --text-only) mode=text ;;
    *) echo "usage: scripts/get_corpus.sh [--small|--text-only]" >&2; exit 2 ;;
esac
RS=$'\x1e'
debs=corpus/debs pkgs=corpus/pkgs
text=corpus/text
[ "$mode" = small ] && text=corpus/text_small
mkdir -p "$debs" "$pkgs" "$text" data/shards
bash scripts/get_tokenizer.sh
make -s prepare

# fetch PKG...: download (once) and unpack each package under corpus/pkgs/PKG.
fetch() {
    local missing=()
    for p in "$@"; do compgen -G "$debs/${p}_*.deb" > /dev/null || missing+=("$p"); done
    if [ ${#missing[@]} -gt 0 ]; then
        (cd "$debs" && apt-get download "${missing[@]}" > /dev/null) ||
            { echo "error: apt-get download ${missing[*]} failed (run apt-get update first?)" >&2; exit 1; }
    fi
    for p in "$@"; do
        if [ ! -d "$pkgs/$p" ]; then
            mkdir -p "$pkgs/$p.tmp" && dpkg-deb -x "$(compgen -G "$debs/${p}_*.deb" | head -n 1)" "$pkgs/$p.tmp"
            mv "$pkgs/$p.tmp" "$pkgs/$p"
        fi
    done
}

# cat_text FILE...: the files' text (gunzipped when .gz), record separators removed.
cat_text() { for f in "$@"; do case "$f" in *.gz | *.dz) zcat -- "$f" ;; *) cat -- "$f" ;; esac; done | tr -d '\036'; }

# per_file NAME DIR FIND_ARGS...: one document per matching (uncompressed) file.
per_file() {
    local name=$1 dir=$2; shift 2
    local out="$text/$name.txt"
    [ -s "$out" ] && return
    [ -d "$dir" ] || { echo "error: $dir not found (package layout changed?)" >&2; exit 1; }
    find "$dir" -type f "$@" -print0 | sort -z |
        xargs -0 perl -e 'for my $f (@ARGV) { open(my $h, "<", $f) or die "$f: $!"; local $/; my $t = <$h>;
                          $t =~ tr/\x1e//d; print $t, "\n\x1e" }' > "$out.tmp"
    mv "$out.tmp" "$out"
}

# html_by_dir NAME DIR [FIND_ARGS...]: one document per directory of HTML pages, pages in name order.
# Directories named src are skipped: rustdoc and Haddock put hyperlinked source code there.
html_by_dir() {
    local name=$1 dir=$2; shift 2
    local out="$text/$name.txt"
    [ -s "$out" ] && return
    find "$dir" -type d -name src -prune -o -type d -print0 | sort -z | while IFS= read -r -d '' d; do
        mapfile -d '' pages < <(find "$d" -maxdepth 1 -type f -name '*.html' "$@" -print0 | sort -z)
        [ ${#pages[@]} -gt 0 ] || continue
        printf '%s\0' "${pages[@]}" | xargs -0 ./prepare html2text | tr -d '\036'
        printf '%s' "$RS"
    done > "$out.tmp"
    mv "$out.tmp" "$out"
}

# pod_per_file NAME DIR: Perl's pod manuals rendered as text, one document per file.
pod_per_file() {
    local name=$1 dir=$2 out="$text/$1.txt"
    [ -s "$out" ] && return
    find "$dir" -type f \( -name '*.pod' -o -name '*.pod.gz' \) -print0 | sort -z | while IFS= read -r -d '' f; do
        cat_text "$f" | pod2text 2> /dev/null || true; printf '\n%s' "$RS"
    done > "$out.tmp"
    mv "$out.tmp" "$out"
}

# dictd NAME PKG: a dictd database (dictzip = gzip) as one document.
dictd() {
    local out="$text/$1.txt"
    [ -s "$out" ] && return
    cat_text "$pkgs/$2"/usr/share/dictd/*.dict.dz > "$out.tmp"
    mv "$out.tmp" "$out"
}

start=$(date +%s)
if [ "$mode" = small ]; then
    fetch python3.11-doc
    per_file python-docs "$pkgs/python3.11-doc/usr/share/doc/python3.11/html/_sources" -name '*.txt'
    ./prepare encode --in "$text/*.txt" --out data/shards --prefix demo --doc-sep '\x1e' --val-fraction 0.03 \
        --shard-tokens 2000000 --force
    echo "demo shards: data/shards/demo_train_*.bin, data/shards/demo_val_*.bin ($(($(date +%s) - start)) s)"
    exit 0
fi

fetch python3.11-doc linux-doc-6.1 git-doc perl-doc dict-gcide dict-foldoc dict-jargon dict-devil
per_file python-docs "$pkgs/python3.11-doc/usr/share/doc/python3.11/html/_sources" -name '*.txt'
per_file linux-kernel-docs "$pkgs/linux-doc-6.1/usr/share/doc/linux-doc-6.1/html/_sources" -name '*.txt'
per_file git-docs "$pkgs/git-doc/usr/share/doc/git-doc" -name '*.txt'
pod_per_file perl-docs "$pkgs/perl-doc/usr/share/perl"
dictd gcide dict-gcide
dictd foldoc dict-foldoc
dictd jargon dict-jargon
dictd devils-dictionary dict-devil

html_packages=(openjdk-17-doc rust-doc ghc-doc erlang-doc libboost1.74-doc python-django-doc postgresql-doc-15
    octave-doc maxima-doc vim-doc zsh-doc nodejs-doc sqlite3-doc wireshark-doc llvm-15-doc cmake-doc
    imagemagick-6-doc qtbase5-doc-html python-pandas-doc python-scipy-doc)
fetch "${html_packages[@]}"
for p in "${html_packages[@]}"; do html_by_dir "$p" "$pkgs/$p"; done
echo "text: $(du -sh "$text" | cut -f1) in $text/ ($(($(date +%s) - start)) s)"
[ "$mode" = text ] && exit 0

./prepare encode --in "$text/*.txt" --out data/shards --prefix corpus --doc-sep '\x1e' --val-fraction 0.01 \
    --shard-tokens 20000000 --force
echo "corpus shards: data/shards/corpus_train_*.bin, data/shards/corpus_val_*.bin ($(($(date +%s) - start)) s)"
