#!/usr/bin/env bash
# Reproduces src/qwen_gateway/ui/vendor/ from the npm registry: the built browser files of the
# pinned versions below, each with its licence. The pages load nothing from any other origin.
#
#   scripts/vendor-ui.sh            # rewrite the vendored files
#   scripts/vendor-ui.sh --check    # fail if they differ from what the registry gives
set -euo pipefail

MARKED=18.2.1
DOMPURIFY=3.4.18
HIGHLIGHT=11.12.0   # @highlightjs/cdn-assets: the prebuilt "common languages" bundle

root="$(cd "$(dirname "$0")/.." && pwd)"
dest="$root/src/qwen_gateway/ui/vendor"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

cd "$work"
npm pack --silent "marked@$MARKED" "dompurify@$DOMPURIFY" "@highlightjs/cdn-assets@$HIGHLIGHT" \
    >/dev/null
for name in marked dompurify highlight; do mkdir -p "$name"; done
tar xzf "marked-$MARKED.tgz" -C marked
tar xzf "dompurify-$DOMPURIFY.tgz" -C dompurify
tar xzf "highlightjs-cdn-assets-$HIGHLIGHT.tgz" -C highlight

out="$work/out"
mkdir -p "$out/marked" "$out/dompurify" "$out/highlight"
cp marked/package/lib/marked.esm.js marked/package/LICENSE "$out/marked/"
cp dompurify/package/dist/purify.es.mjs dompurify/package/LICENSE "$out/dompurify/"
cp highlight/package/es/highlight.min.js highlight/package/LICENSE "$out/highlight/"
# source-map comments would make the browser ask for files that are not shipped
sed -i '/^\/\/# sourceMappingURL=/d' "$out/marked/marked.esm.js" "$out/dompurify/purify.es.mjs"
# served as .js (the gateway serves a fixed set of file types)
mv "$out/dompurify/purify.es.mjs" "$out/dompurify/purify.es.js"

if [[ "${1:-}" == "--check" ]]; then
    for lib in marked dompurify highlight; do
        diff -r "$out/$lib" "$dest/$lib"
    done
    echo "vendored files match the registry"
    exit 0
fi
for lib in marked dompurify highlight; do
    rm -rf "${dest:?}/$lib"
    cp -r "$out/$lib" "$dest/$lib"
done
echo "vendored marked $MARKED, dompurify $DOMPURIFY, highlight.js $HIGHLIGHT into $dest"
