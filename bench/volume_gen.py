#!/usr/bin/env python3
"""Deterministic "volume" tree for the backup benchmark (called by datasets.sh).

  volume_gen.py generate DIR    build the pristine tree (~2.0 GiB)
  volume_gen.py mutate DIR      pristine -> "next night" (~5% of the bytes change)
  volume_gen.py reset DIR       mutated  -> pristine again (rewrites only what mutate touched)
  volume_gen.py describe        print the layout and the mutation plan

Every byte is a pure function of BENCH_SEED (default 20240611), BENCH_VOLUME_SCALE
and the file's name, so two machines (or two runs) get identical trees.
Incompressible bytes are SHAKE-128 output; text is produced by
random.Random(str seed), whose output is stable across CPython 3 versions.

Layout (sizes in MiB unless said):
  large/app.log         256  text log lines        (compressible)
  large/events.jsonl    256  JSON lines            (compressible)
  large/access.log      128  HTTP access log       (compressible)
  large/disk.img        256  random                (incompressible, edited in place)
  large/archive.bin     256  random                (incompressible, 4 KiB inserted mid-file)
  large/media.mp4       128  random                (incompressible)
  large/copies/media.mp4 128 exact duplicate of large/media.mp4
  small/projNN/...       20,000 files, 1-64 KiB uniform, half text, half random,
                         nested 2-3 levels (~100 files per directory)
  small/projNN/vendor/   1,000 exact duplicates of small files

BENCH_VOLUME_SCALE=N (integer, default 1) divides every size and count above by
N (large files are rounded down to whole MiB, at least 1 MiB) for quick smoke
runs: N=16 gives a ~130 MiB tree with the same shape. N=1 is the reference tree.
"""
import hashlib
import os
import random
import shutil
import sys

SEED = os.environ.get("BENCH_SEED", "20240611")
SCALE = int(os.environ.get("BENCH_VOLUME_SCALE", "1"))
if SCALE < 1:
    sys.exit("BENCH_VOLUME_SCALE must be a positive integer")
KiB = 1024
MiB = 1 << 20
BLOCK = MiB  # random files are made of independently derivable 1 MiB blocks


def mib(n):
    """n MiB divided by SCALE, in bytes, whole MiB, at least 1 MiB (identity when SCALE == 1)."""
    return max(1, n // SCALE) * MiB


def count(n):
    """n divided by SCALE, at least 1 (identity when SCALE == 1)."""
    return max(1, n // SCALE)


TEXT_LARGE = {"large/app.log": mib(256), "large/events.jsonl": mib(256), "large/access.log": mib(128)}
RAND_LARGE = {"large/disk.img": mib(256), "large/archive.bin": mib(256), "large/media.mp4": mib(128)}
DUP_LARGE = {"large/copies/media.mp4": "large/media.mp4"}
N_SMALL = count(20000)
N_DUP_SMALL = count(1000)

# mutation plan ("next night")
MUT_DISK_REGIONS = count(16)   # 1 MiB overwrites in disk.img
MUT_INSERT = 4096              # bytes inserted in the middle of archive.bin
MUT_APPEND = {"large/app.log": mib(16), "large/events.jsonl": mib(12), "large/access.log": mib(6)}
MUT_SMALL_MODIFY = count(1000)
MUT_SMALL_DELETE = count(300)
MUT_SMALL_NEW = count(600)


def shake(tag, n):
    return hashlib.shake_128(f"{SEED}:{tag}".encode()).digest(n)


def rng(tag):
    return random.Random(f"{SEED}:{tag}")


def write(path, data):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)


# ---------------------------------------------------------------- random files
def rand_block(name, i):
    return shake(f"{name}#{i}", BLOCK)


def write_rand_large(root, name, size):
    p = os.path.join(root, name)
    os.makedirs(os.path.dirname(p), exist_ok=True)
    with open(p, "wb") as f:
        for i in range(size // BLOCK):
            f.write(rand_block(name, i))


# ---------------------------------------------------------------- text
WORDS = None
W = None  # set by msg_pool()


def words():
    global WORDS
    if WORDS is None:
        r = rng("words")
        syl = ["ka", "lo", "mi", "ne", "ru", "ta", "shi", "ven", "dor", "ex", "pro", "con", "tra", "al",
               "er", "in", "on", "us", "ing", "tion", "cache", "db", "req", "user", "id", "log", "net"]
        ws = set()
        while len(ws) < 4096:
            ws.add("".join(r.choice(syl) for _ in range(r.randint(1, 5))))
        WORDS = sorted(ws)
    return WORDS


COMPONENTS = ["api.handler", "api.auth", "db.pool", "db.query", "cache.redis", "queue.consumer", "queue.producer",
              "billing.invoice", "billing.charge", "search.indexer", "mailer", "scheduler", "storage.s3",
              "http.client", "grpc.server", "metrics", "feature.flags", "session", "uploader", "thumbnailer"]
LEVELS = ["INFO"] * 14 + ["DEBUG"] * 4 + ["WARN"] * 2 + ["ERROR"]
PATHS = ["/api/v1/items", "/api/v1/users", "/api/v2/orders", "/static/app.js", "/static/app.css", "/login",
         "/logout", "/search", "/api/v1/cart", "/healthz", "/metrics", "/api/v2/payments", "/img/thumb"]
METHODS = ["GET"] * 8 + ["POST"] * 2 + ["PUT", "DELETE"]
STATUS = [200] * 30 + [201, 204, 301, 302, 304, 400, 401, 403, 404, 404, 500, 502, 503]
AGENTS = ["Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/122.0 Safari/537.36",
          "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_3) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.3",
          "curl/8.5.0", "python-requests/2.31.0", "Go-http-client/2.0", "kube-probe/1.29",
          "Mozilla/5.0 (iPhone; CPU iPhone OS 17_3 like Mac OS X) AppleWebKit/605.1.15 Mobile/15E148"]
EVENTS = ["page_view", "click", "add_to_cart", "checkout", "login", "logout", "search", "scroll", "error"]


def msg_pool(r, n=3000):
    global W
    W = w = words()
    pool = []
    for _ in range(n):
        k = r.randint(3, 12)
        pool.append(" ".join(r.choice(w) for _ in range(k)) + " %d %s=%d")
    return pool


def line_app(r, st, pool):
    st[0] += r.getrandbits(7)
    t = st[0]
    s, ms = divmod(t, 1000)
    m, s = divmod(s, 60)
    h, m = divmod(m, 60)
    d, h = divmod(h, 24)
    return "2024-03-%02dT%02d:%02d:%02d.%03dZ %-5s [%s] req=%08x %s\n" % (
        1 + d % 28, h, m, s, ms, LEVELS[r.getrandbits(20) % 21], COMPONENTS[r.getrandbits(20) % 20],
        r.getrandbits(32), pool[r.getrandbits(20) % len(pool)] % (r.getrandbits(14), W[r.getrandbits(12)],
                                                                  r.getrandbits(10)))


def line_json(r, st, pool):
    st[0] += r.getrandbits(6)
    return ('{"ts":%d,"type":"%s","user":%d,"session":"%012x","path":"%s/%d","ms":%d,"ok":%s,"tags":["%s","%s"]}\n' % (
        1709251200000 + st[0], EVENTS[r.getrandbits(20) % 9], r.getrandbits(17), r.getrandbits(48),
        PATHS[r.getrandbits(20) % 13], r.getrandbits(12), r.getrandbits(9), "true" if r.getrandbits(4) else "false",
        W[r.getrandbits(12)], W[r.getrandbits(12)]))


def line_access(r, st, pool):
    st[0] += r.getrandbits(8)
    t = st[0]
    s, ms = divmod(t, 1000)
    m, s = divmod(s, 60)
    h, m = divmod(m, 60)
    d, h = divmod(h, 24)
    return '10.%d.%d.%d - - [%02d/Mar/2024:%02d:%02d:%02d +0000] "%s %s/%d?page=%d HTTP/1.1" %d %d "-" "%s" 0.%03d\n' % (
        r.getrandbits(8), r.getrandbits(8), r.getrandbits(8), 1 + d % 28, h, m, s,
        METHODS[r.getrandbits(20) % 12], PATHS[r.getrandbits(20) % 13], r.getrandbits(14), r.getrandbits(3),
        STATUS[r.getrandbits(20) % 43], r.getrandbits(16), AGENTS[r.getrandbits(20) % 7], r.getrandbits(10) % 1000)


LINE = {"large/app.log": line_app, "large/events.jsonl": line_json, "large/access.log": line_access}


def text_stream(name, tag, size):
    """Yield pieces of log text for file `name` totalling exactly `size` bytes."""
    r = rng(f"{name}:{tag}")
    pool = msg_pool(r)
    fn = LINE[name]
    st = [r.getrandbits(20) * 1000 if tag == "base" else 40 * 86400 * 1000]
    done = 0
    while done < size:
        buf = "".join(fn(r, st, pool) for _ in range(20000)).encode()
        if done + len(buf) >= size:
            buf = buf[: size - done - 1] + b"\n"
        done += len(buf)
        yield buf


def write_text_large(root, name, size):
    p = os.path.join(root, name)
    os.makedirs(os.path.dirname(p), exist_ok=True)
    with open(p, "wb") as f:
        for piece in text_stream(name, "base", size):
            f.write(piece)


def code_text(r, n):
    """Source/config-like text of exactly n bytes."""
    w = words()
    out = []
    total = 0
    while total < n:
        k = r.getrandbits(3)
        if k < 3:
            ln = "    " * r.randint(0, 3) + "%s = %s(%s, %d)\n" % (w[r.getrandbits(12)], w[r.getrandbits(12)],
                                                                    w[r.getrandbits(12)], r.getrandbits(16))
        elif k < 5:
            ln = '  "%s": {"%s": %d, "%s": "%s"},\n' % (w[r.getrandbits(12)], w[r.getrandbits(12)],
                                                      r.getrandbits(20), w[r.getrandbits(12)],
                                                      w[r.getrandbits(12)])
        elif k < 7:
            ln = "# " + " ".join(w[r.getrandbits(12)] for _ in range(r.randint(4, 14))) + "\n"
        else:
            ln = "%d,%s,%d.%02d,%s\n" % (r.getrandbits(24), w[r.getrandbits(12)], r.getrandbits(12),
                                        r.getrandbits(6) % 100, w[r.getrandbits(12)])
        out.append(ln)
        total += len(ln)
    return "".join(out).encode()[:n]


# ---------------------------------------------------------------- small files
TEXT_EXT = ["py", "json", "yaml", "md", "csv", "txt", "rs", "go"]
BIN_EXT = ["jpg", "png", "gz", "zst", "pdf", "woff2"]


def small_size(i, gen=0):
    r = rng(f"small-size:{i}:{gen}")
    return r.randint(1 * KiB, 64 * KiB)


def small_path(i):
    top = i % 20 if i < N_SMALL else i % 22
    mid = (i // 20) % 10
    sub = f"sub{(i // 200) % 3}/" if i % 5 == 0 else ""
    text = (i * 2654435761) % 100 < 50
    ext = TEXT_EXT[i % len(TEXT_EXT)] if text else BIN_EXT[i % len(BIN_EXT)]
    return f"small/proj{top:02d}/mod{mid:02d}/{sub}f{i:05d}.{ext}", text


def small_content(i, gen=0):
    path, text = small_path(i)
    n = small_size(i, gen)
    if text:
        return code_text(rng(f"small-text:{i}:{gen}"), n)
    return shake(f"small-bin:{i}:{gen}", n)


def dup_list():
    r = rng("dups")
    src = r.sample(range(N_SMALL), N_DUP_SMALL)
    out = []
    for k, i in enumerate(src):
        p, _ = small_path(i)
        top = p.split("/")[1]
        out.append((f"small/{top}/vendor/copy{k:04d}-{os.path.basename(p)}", i))
    return out


# ---------------------------------------------------------------- plan of the mutation
def mutation_plan():
    r = rng("mutate")
    dup_src = {i for _, i in dup_list()}
    cand = [i for i in range(N_SMALL) if i not in dup_src]
    chosen = r.sample(cand, MUT_SMALL_MODIFY + MUT_SMALL_DELETE)
    modify = sorted(chosen[:MUT_SMALL_MODIFY])
    delete = sorted(chosen[MUT_SMALL_MODIFY:])
    new = list(range(N_SMALL, N_SMALL + MUT_SMALL_NEW))
    disk = sorted(r.randrange(0, RAND_LARGE["large/disk.img"] - MiB, 4096) for _ in range(MUT_DISK_REGIONS))
    insert_at = RAND_LARGE["large/archive.bin"] // 2 + 12345
    return dict(modify=modify, delete=delete, new=new, disk=disk, insert_at=insert_at)


# ---------------------------------------------------------------- commands
def generate(root):
    if os.path.exists(root):
        shutil.rmtree(root)
    os.makedirs(root)
    for name, size in RAND_LARGE.items():
        write_rand_large(root, name, size)
    for dst, src in DUP_LARGE.items():
        os.makedirs(os.path.dirname(os.path.join(root, dst)), exist_ok=True)
        shutil.copyfile(os.path.join(root, src), os.path.join(root, dst))
    for name, size in TEXT_LARGE.items():
        write_text_large(root, name, size)
    for i in range(N_SMALL):
        write(os.path.join(root, small_path(i)[0]), small_content(i))
    for dst, i in dup_list():
        os.makedirs(os.path.dirname(os.path.join(root, dst)), exist_ok=True)
        shutil.copyfile(os.path.join(root, small_path(i)[0]), os.path.join(root, dst))


def mutate(root):
    plan = mutation_plan()
    # 1. in-place overwrites in a disk image
    with open(os.path.join(root, "large/disk.img"), "r+b") as f:
        for k, off in enumerate(plan["disk"]):
            f.seek(off)
            f.write(shake(f"mut-disk:{k}", MiB))
    # 2. insertion in the middle of a big random file (shifts everything after it)
    p = os.path.join(root, "large/archive.bin")
    with open(p, "rb") as f:
        data = f.read()
    at = plan["insert_at"]
    with open(p + ".tmp", "wb") as f:
        f.write(data[:at])
        f.write(shake("mut-insert", MUT_INSERT))
        f.write(data[at:])
    os.replace(p + ".tmp", p)
    # 3. appends to the logs
    for name, n in MUT_APPEND.items():
        with open(os.path.join(root, name), "ab") as f:
            for piece in text_stream(name, "append", n):
                f.write(piece)
    # 4. small files: modified, deleted, new
    for i in plan["modify"]:
        write(os.path.join(root, small_path(i)[0]), small_content(i, gen=1))
    for i in plan["delete"]:
        os.unlink(os.path.join(root, small_path(i)[0]))
    for i in plan["new"]:
        write(os.path.join(root, small_path(i)[0]), small_content(i))


def reset(root):
    plan = mutation_plan()
    with open(os.path.join(root, "large/disk.img"), "r+b") as f:
        for off in plan["disk"]:
            for b in range(off // BLOCK, (off + MiB - 1) // BLOCK + 1):
                f.seek(b * BLOCK)
                f.write(rand_block("large/disk.img", b))
    write_rand_large(root, "large/archive.bin", RAND_LARGE["large/archive.bin"])
    for name, size in TEXT_LARGE.items():
        os.truncate(os.path.join(root, name), size)
    for i in plan["modify"] + plan["delete"]:
        write(os.path.join(root, small_path(i)[0]), small_content(i))
    for i in plan["new"]:
        p = os.path.join(root, small_path(i)[0])
        if os.path.exists(p):
            os.unlink(p)
        # the pristine tree has no empty directories: drop those only the new files needed
        d = os.path.dirname(p)
        while d != root and os.path.isdir(d) and not os.listdir(d):
            os.rmdir(d)
            d = os.path.dirname(d)
    for d in ("small/proj20", "small/proj21"):
        if os.path.isdir(os.path.join(root, d)):
            shutil.rmtree(os.path.join(root, d))


def describe():
    plan = mutation_plan()
    tot = sum(TEXT_LARGE.values()) + sum(RAND_LARGE.values()) + sum(RAND_LARGE[s] for s in DUP_LARGE.values())
    small = sum(small_size(i) for i in range(N_SMALL))
    dups = sum(small_size(i) for _, i in dup_list())
    print(f"large files: {tot / MiB:.0f} MiB (text {sum(TEXT_LARGE.values()) / MiB:.0f}, random "
          f"{sum(RAND_LARGE.values()) / MiB:.0f}, duplicate {sum(RAND_LARGE[s] for s in DUP_LARGE.values()) / MiB:.0f})")
    print(f"small files: {N_SMALL} files, {small / MiB:.0f} MiB; duplicates: {N_DUP_SMALL} files, {dups / MiB:.0f} MiB")
    print(f"total: {(tot + small + dups) / MiB:.0f} MiB")
    mod = sum(small_size(i, 1) for i in plan["modify"])
    new = sum(small_size(i) for i in plan["new"])
    dele = sum(small_size(i) for i in plan["delete"])
    changed = MUT_DISK_REGIONS * MiB + MUT_INSERT + sum(MUT_APPEND.values()) + mod + new
    print(f"mutation: disk.img {MUT_DISK_REGIONS}x1 MiB overwritten, archive.bin +{MUT_INSERT} B inserted at "
          f"{plan['insert_at']}, logs +{sum(MUT_APPEND.values()) / MiB:.0f} MiB appended, "
          f"{len(plan['modify'])} small files rewritten ({mod / MiB:.1f} MiB), {len(plan['delete'])} deleted "
          f"({dele / MiB:.1f} MiB), {len(plan['new'])} new ({new / MiB:.1f} MiB)")
    print(f"new bytes in the mutated tree: {changed / MiB:.0f} MiB "
          f"({100 * changed / (tot + small + dups):.1f}% of the pristine tree)")


if __name__ == "__main__":
    cmd = sys.argv[1] if len(sys.argv) > 1 else "describe"
    if cmd == "describe":
        describe()
    elif cmd in ("generate", "mutate", "reset") and len(sys.argv) == 3:
        globals()[cmd](sys.argv[2])
    else:
        sys.exit(__doc__)
