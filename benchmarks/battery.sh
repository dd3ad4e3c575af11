#!/usr/bin/env bash
# The hardening battery (issue 7): bad inputs, a shared collection, damaged files, against a COPY of a
# collection (default: the `make demo` one) with a real server and real CLI runs; prints what each answers.
#   bash benchmarks/battery.sh [COLLECTION]
cd "$(dirname "$0")/.." || exit 1
export PATH="$PWD/.venv/bin:$PATH"
COLLECTION=${1:-demo-output/collection}
B=$(mktemp -d); trap 'rm -rf "$B"' EXIT
mkdir -p $B/x $B/empty; cp -r "$COLLECTION" $B/col
PY=.venv/bin/python
PHOTO=$($PY -c "import skimage,pathlib;print(pathlib.Path(skimage.__file__).parent/'data'/'coffee.png')")
$PY - $B/x <<'P'
import numpy as np, skimage, pathlib, sys
from PIL import Image
d = pathlib.Path(skimage.__file__).parent / "data"
cam = np.asarray(Image.open(d / "camera.png")).astype(np.float32) / 255
out = pathlib.Path(sys.argv[1])
Image.fromarray(cam, mode="F").save(out / "float.tif")
Image.open(d / "chelsea.png").convert("RGB").save(out / "café 東京.png")
for i, n in enumerate(["astronaut.png", "rocket.jpg", "motorcycle_left.png"]):
    Image.open(d / n).convert("RGB").save(out / f"new{i}.png")
ramp = np.linspace(0, 255, 8000, dtype=np.float32)
big = np.stack([np.add.outer(ramp, ramp) / 2] * 3, axis=2).astype(np.uint8)
Image.fromarray(big).save(out / "big.jpg", quality=60)
P
PORT=$($PY -c "import socket; s=socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])")
activeindex serve $B/col --port $PORT --token tok -q 2>$B/server.log & SP=$!
trap 'kill $SP 2>/dev/null; rm -rf "$B"' EXIT
until curl -s localhost:$PORT/healthz >/dev/null; do sleep 0.5; done
echo "== 1. CLI add while the server runs, then a server activation"
activeindex add $B/col $B/x/new0.png -q 2>&1 | tail -1
curl -s -o /dev/null -w "activate over HTTP: %{http_code}\n" -H "Authorization: Bearer tok" -F image=@$B/x/new1.png localhost:$PORT/v1/activate
curl -s localhost:$PORT/v1/status | $PY -c "import json,sys; s=json.load(sys.stdin); print('server status: images', s['images'], 'ntotal', s['ntotal'])"
curl -s -F images=@$B/x/new0.png -F k=1 localhost:$PORT/v1/search | $PY -c "import json,sys; r=json.load(sys.stdin)['results'][0]; print('server finds the CLI image:', r['matches'][0]['filename'], round(r['matches'][0]['similarity'],3))"
echo "== 3. float TIFF"
activeindex add $B/col $B/x/float.tif 2>&1 | tail -1
$PY -c "from activeindex.imageio import load_image; a=load_image('$B/x/float.tif'); print('decoded float TIFF: min', a.min(), 'max', a.max(), 'mean', round(float(a.mean()),1))"
echo "== 4. eight 64 MP JPEGs in one search"
ARGS=""; for i in 1 2 3 4 5 6 7 8; do ARGS="$ARGS -F images=@$B/x/big.jpg"; done
RSS0=$(ps -o rss= -p $SP); curl -s -w " HTTP %{http_code}\n" $ARGS localhost:$PORT/v1/search; RSS1=$(ps -o rss= -p $SP); echo "server RSS before/after: $((RSS0/1024)) / $((RSS1/1024)) MB"
head -c 200000000 /dev/zero > $B/x/zero.bin; curl -s -w " HTTP %{http_code}\n" -F images=@$B/x/zero.bin localhost:$PORT/v1/search
curl -s -w " HTTP %{http_code}\n" -F image=@$B/x/zero.bin localhost:$PORT/v1/activate
echo "== 5. ids, missing activated file"
for s in "" /activated /thumbnail; do curl -s -w " HTTP %{http_code}\n" localhost:$PORT/v1/images/99999999999999999999$s; done
A=$($PY -c "import sqlite3;print(sqlite3.connect('$B/col/catalog.sqlite').execute(\"select activated_path from images where activated_path like '$B%' limit 1\").fetchone()[0])")
ID=$($PY -c "import sqlite3;print(sqlite3.connect('$B/col/catalog.sqlite').execute(\"select id from images where activated_path like '$B%' limit 1\").fetchone()[0])")
mv "$A" "$A.hidden"; curl -s -w " HTTP %{http_code}\n" localhost:$PORT/v1/images/$ID/activated; mv "$A.hidden" "$A"
echo "== 10. smaller"
curl -s -w " HTTP %{http_code}\n" -F images=$(printf 'x%.0s' $(seq 1 2000)) localhost:$PORT/v1/search
curl -s -w " HTTP %{http_code}\n" -H "Authorization: Bearer tok" -F image=@$B/x/new2.png -F image=@$B/x/new2.png localhost:$PORT/v1/activate
curl -s -F "images=@$B/x/café 東京.png" -F k=1 localhost:$PORT/v1/search | $PY -c "import json,sys; print('non-ASCII name back:', json.load(sys.stdin)['results'][0]['filename'])"
curl -s -w " HTTP %{http_code}\n" -H "Host: evil.example" localhost:$PORT/v1/status
curl -s localhost:$PORT/docs | grep -o 'src="[^"]*"' | head -2
curl -s localhost:$PORT/openapi.json | $PY -c "import json,sys; p=json.load(sys.stdin)['paths']; print({k: sorted(v[m]['responses']) for k,v in p.items() for m in v})"
curl -s -o /dev/null -w "activate a non-image (upload cleaned): %{http_code}; " -H "Authorization: Bearer tok" -F image=@/etc/hostname localhost:$PORT/v1/activate; echo "uploads left: $(find $B/col/uploads -type f | wc -l)"
kill $SP; wait $SP 2>/dev/null
echo "== 6/7. CLI arguments"
for args in "search $B/col $PHOTO -k 0" "search $B/col $PHOTO -k -1" "activate $B/col $PHOTO --out $B/x/out --batch-size 0" "activate $B/col $PHOTO --out /etc/hostname" "serve $B/col --host myhost.invalid" "serve $B/col --port 99999" "info $B/col --device tpu" "activate $B/col $PHOTO --out $B/out --scaling nan" "activate $B/col $PHOTO --out $B/out --iterations 0" "search $B/col $PHOTO /etc/hostname -k 1 -q" "add $B/col $B/empty -q"; do
  echo "\$ activeindex $args"; timeout 300 activeindex $args 2>&1 | tail -2; echo "exit ${PIPESTATUS[0]}"; done
echo "== 8. file mode"
activeindex activate $B/col $B/x/new2.png --out $B/out --iterations 2 -q >/dev/null 2>&1; ls -l $B/out | tail -1
echo "== 5/10. catalog and index damage"
mkdir -p $B/nocat && cp $B/col/manifest.json $B/col/index.faiss $B/nocat/ && activeindex info $B/nocat; echo "exit $? ; catalog created: $(ls $B/nocat/catalog.sqlite 2>/dev/null || echo no)"
cp -r $B/col $B/trunc; head -c 1000 $B/col/index.faiss > $B/trunc/index.faiss; activeindex info $B/trunc; echo "exit $?"
cp -r $B/col $B/bad; $PY -c "
import sqlite3; db=sqlite3.connect('$B/bad/catalog.sqlite'); db.execute('PRAGMA wal_checkpoint(TRUNCATE)'); db.close()
p='$B/bad/catalog.sqlite'; d=bytearray(open(p,'rb').read()); d[8192:]=b'\xff'*(len(d)-8192); open(p,'wb').write(d)"
activeindex info $B/bad; echo "exit $?"; activeindex search $B/bad $PHOTO; echo "exit $?"
