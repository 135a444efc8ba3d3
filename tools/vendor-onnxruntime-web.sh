#!/usr/bin/env bash
# Refreshes the onnxruntime-web files the web export ships (src/headstart/deploy/webassets)
# from the npm registry: bash tools/vendor-onnxruntime-web.sh [VERSION]
set -euo pipefail
VERSION="${1:-1.23.2}"
DEST="$(cd "$(dirname "$0")/.." && pwd)/src/headstart/deploy/webassets"
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT
(cd "$TMP" && npm pack "onnxruntime-web@$VERSION" --silent >/dev/null && tar xzf onnxruntime-web-*.tgz)
sed 's#//\# sourceMappingURL=.*$##' "$TMP/package/dist/ort.wasm.min.js" > "$DEST/ort.wasm.min.js"
cp "$TMP/package/dist/ort-wasm-simd-threaded.mjs" "$DEST/"
gzip -9 -n -c "$TMP/package/dist/ort-wasm-simd-threaded.wasm" > "$DEST/ort-wasm-simd-threaded.wasm.gz"
sed -i "1s/onnxruntime-web [0-9.]*/onnxruntime-web $VERSION/" "$DEST/LICENSE-onnxruntime-web.txt"
echo "onnxruntime-web $VERSION vendored into $DEST"
