"""Statistics and the printed tables of bench/run.py: medians across reps, ratios, verdicts."""

from __future__ import annotations

import statistics

PIN = "@pinned"

RT_TARGET = 1.25          # auxipc round-trip p50 <= 1.25 x the forwarder floor's
ASYNC_TARGET = 0.5        # auxipc async recv msg/s >= 0.5 x raw PUB/SUB's, zero loss
DBUS_TARGET = 1.0         # auxipc round-trip p50 <= 1.0 x D-Bus's (dbus-fast both ends), free and pinned
FIXTURE_START_MS = 250    # auxbus fixture: start -> broker + parent + child bound
FIXTURE_TEARDOWN_MS = 100
COMMAND_MS = 150          # wall of auxipc ls / send / wait / --help
REBOUND_MS = 150          # auxipc up: SIGKILL of a driver -> its device bound again


# ---- statistics --------------------------------------------------------------------------

def pct(sorted_vals, q):
    if not sorted_vals:
        return float("nan")
    k = (len(sorted_vals) - 1) * q
    f = int(k)
    c = min(f + 1, len(sorted_vals) - 1)
    return sorted_vals[f] + (sorted_vals[c] - sorted_vals[f]) * (k - f)


def rt_stats(res):
    lat = sorted(res["lat"])
    return {"n": len(lat), "p50_us": pct(lat, 0.50) / 1e3, "p90_us": pct(lat, 0.90) / 1e3,
            "p99_us": pct(lat, 0.99) / 1e3, "max_us": lat[-1] / 1e3,
            "rt_per_s": len(lat) / (res["total_ns"] / 1e9)}


def med(vals):
    vals = [v for v in vals if v is not None]
    return statistics.median(vals) if vals else float("nan")


RT_ROWS = [
    ("direct", "floor: DEALER → ROUTER direct (pyzmq + msgpack)"),
    ("forwarder", "floor: DEALER → Python ROUTER/ROUTER forwarder → DEALER"),
    ("dbus", "D-Bus: dbus-fast → dbus-daemon → dbus-fast Echo(ay)"),
    ("aux_c2p", "auxipc: child→parent SET_MAC call (via broker)"),
    ("aux_p2c", "auxipc: parent→child RESET_WARN call (via broker)"),
    ("aux_c2q_lane", "auxipc: child→parent QSET_ADD call (direct lane)"),
    ("aux_c2q_broker", "auxipc: child→parent QSET_ADD call (via broker: AUXIPC_LANE=0)"),
]
TP_ROWS = [
    ("pubsub", "floor: PUB → SUB, HWM unlimited"),
    ("pubsub_proxy", "floor: PUB → XSUB/XPUB zmq.proxy → SUB"),
    ("aux_async", "auxipc: parent→child LINK_CHANGE notify (via broker)"),
]



ROLES = ("caller", "broker", "callee")


def summarize_cpu(runs):
    out = {}
    for role in ROLES:
        vals = [r["cpu"][role] for r in runs if role in r.get("cpu", {})]
        if vals:
            out[role] = {"cpu_us": med([v["cpu_us"] for v in vals]), "ctx": med([v["ctx"] for v in vals])}
    return out


def summarize(results):
    s = {}
    for key, runs in results.items():
        if "p50_us" in runs[0]:
            p50s = [r["p50_us"] for r in runs]
            s[key] = {"n": runs[0]["n"], "p50_us": med(p50s), "p90_us": med([r["p90_us"] for r in runs]),
                      "p99_us": med([r["p99_us"] for r in runs]), "rt_per_s": med([r["rt_per_s"] for r in runs]),
                      "p50_min": min(p50s), "p50_max": max(p50s), "reps": len(runs)}
        else:
            rr = [r["recv_msg_per_s"] for r in runs]
            s[key] = {"sent": runs[0]["sent"], "recv_msg_per_s": med(rr),
                      "send_msg_per_s": med([r["send_msg_per_s"] for r in runs]),
                      "recv_min": min(rr), "recv_max": max(rr), "lost_max": max(r["lost"] for r in runs),
                      "gaps_max": max(r["gaps"] for r in runs), "reps": len(runs)}
            if key == "aux_async":
                s[key] |= {"e2e_msg_per_s": med([r["e2e_msg_per_s"] for r in runs]),
                           "async_lost": sum(r["async_lost"] for r in runs),
                           "async_dropped_hwm": sum(r["async_dropped_hwm"] for r in runs),
                           "failed": sum(r["failed"] for r in runs),
                           "received": [r["received"] for r in runs]}
        s[key]["cpu"] = summarize_cpu(runs)
    return s


def build_table(s, info, args):
    out = []
    add = out.append
    add(f"auxipc bench: {info.get('cpu')} | nproc={info['nproc']} | Python {info['python']} | "
        f"pyzmq {info['pyzmq']} / libzmq {info['libzmq']} | msgpack {info['msgpack']}")
    add(f"auxipc measured: {info.get('source')}")
    add(f"Each figure = median of {args.reps} interleaved rep(s); p50 range across reps in the last column.")
    add("")
    add("| case | placement | N | p50 µs | p90 µs | p99 µs | calls/s | p50 range µs |")
    add("|------|-----------|--:|-------:|-------:|-------:|--------:|--------------|")
    for suffix, place in (("", "free"), (PIN, f"pinned cpu{args.pin_cpu}")):
        for key, label in RT_ROWS:
            r = s.get(key + suffix)
            if r:
                add(f"| {label} | {place} | {r['n']} | {r['p50_us']:.1f} | {r['p90_us']:.1f} | "
                    f"{r['p99_us']:.1f} | {r['rt_per_s']:,.0f} | {r['p50_min']:.1f}–{r['p50_max']:.1f} |")
    add("")
    add("| case | msgs/run | recv msg/s | send msg/s | lost (max) | recv msg/s range |")
    add("|------|---------:|-----------:|-----------:|-----------:|------------------|")
    for key, label in TP_ROWS:
        r = s.get(key)
        if r:
            add(f"| {label} | {r['sent']:,} | {r['recv_msg_per_s']:,.0f} | {r['send_msg_per_s']:,.0f} | "
                f"{r['lost_max']:,} | {r['recv_min']:,.0f}–{r['recv_max']:,.0f} |")
    add("")
    add("CPU per call / per message, all threads of each process (µs; context switches in brackets); "
        "caller = client, child (c2p), parent (p2c) or publisher; callee = server, parent (c2p), child (p2c) "
        "or subscriber; broker = forwarder, zmq.proxy process or auxipc broker.")
    add("")
    add("| case | placement | caller | broker | callee | total CPU µs | wall µs |")
    add("|------|-----------|-------:|-------:|-------:|------------:|--------:|")
    for key, label in RT_ROWS + TP_ROWS:
        for suffix, place in (("", "free"), (PIN, f"pinned cpu{args.pin_cpu}")):
            r = s.get(key + suffix)
            if not r or not r.get("cpu"):
                continue
            c = r["cpu"]
            cells = [f"{c[k]['cpu_us']:.1f} ({c[k]['ctx']:.1f})" if k in c else "–" for k in ROLES]
            wall = r["p50_us"] if "p50_us" in r else (1e6 / r["recv_msg_per_s"] if r["recv_msg_per_s"] else 0)
            add(f"| {label} | {place} | {' | '.join(cells)} | {sum(v['cpu_us'] for v in c.values()):.1f} | "
                f"{wall:.1f}{' (p50)' if 'p50_us' in r else ' (1/recv rate)'} |")
    a = s.get("aux_async")
    if a:
        add(f"\nauxipc async: end-to-end (parent's first timed send → child's last receive) "
            f"{a['e2e_msg_per_s']:,.0f} msg/s; received per rep {a['received']}; async_lost={a['async_lost']} "
            f"async_dropped_hwm={a['async_dropped_hwm']} notify failures={a['failed']} (sums over reps)")
    add("")
    add("| target | auxipc | floor | ratio | target | verdict |")
    add("|--------|-------:|------:|------:|--------|---------|")
    for suffix, place in (("", "free"), (PIN, "pinned")):
        f = s.get("forwarder" + suffix)
        d = s.get("direct" + suffix)
        for key, what in (("aux_c2p", "c2p SET_MAC"), ("aux_p2c", "p2c RESET_WARN")):
            r = s.get(key + suffix)
            if r and f:
                ratio = r["p50_us"] / f["p50_us"]
                extra = f" (direct {r['p50_us'] / d['p50_us']:.2f}x)" if d else ""
                add(f"| {what} p50, {place} | {r['p50_us']:.1f} µs | forwarder {f['p50_us']:.1f} µs | "
                    f"{ratio:.2f}x{extra} | ≤ {RT_TARGET}x | {'PASS' if ratio <= RT_TARGET else 'MISS'} |")
    for suffix, place in (("", "free"), (PIN, "pinned")):
        db = s.get("dbus" + suffix)
        for key, what in (("aux_c2p", "c2p SET_MAC"), ("aux_p2c", "p2c RESET_WARN"),
                          ("aux_c2q_lane", "c2p QSET_ADD, lane"), ("aux_c2q_broker", "c2p QSET_ADD, no lane")):
            r = s.get(key + suffix)
            if r and db:
                ratio = r["p50_us"] / db["p50_us"]
                add(f"| {what} p50, {place} | {r['p50_us']:.1f} µs | D-Bus {db['p50_us']:.1f} µs | {ratio:.2f}x | "
                    f"≤ {DBUS_TARGET}x | {'PASS' if ratio <= DBUS_TARGET else 'MISS'} |")
    if info.get("dbus_skipped"):
        add(f"| sync p50 vs D-Bus | – | – | – | ≤ {DBUS_TARGET}x | skipped: {info['dbus_skipped']} |")
    p = s.get("pubsub")
    if a and p:
        ratio = a["recv_msg_per_s"] / p["recv_msg_per_s"]
        lossless = a["lost_max"] == 0 and a["async_lost"] == 0 and a["async_dropped_hwm"] == 0 \
            and a["failed"] == 0 and a["gaps_max"] == 0
        px = s.get("pubsub_proxy")
        extra = f" (proxy floor {a['recv_msg_per_s'] / px['recv_msg_per_s']:.2f}x)" if px else ""
        add(f"| async LINK_CHANGE recv msg/s | {a['recv_msg_per_s']:,.0f} | PUB/SUB {p['recv_msg_per_s']:,.0f} | "
            f"{ratio:.2f}x{extra} | ≥ {ASYNC_TARGET}x, zero loss | "
            f"{'PASS' if ratio >= ASYNC_TARGET and lossless else 'MISS'}"
            f"{'' if lossless else ' (LOSS)'} |")
    return "\n".join(out)


# ---- the speed a user feels (bench/user.py) ----------------------------------------------------

def summarize_user(results):
    """Medians across reps of each user case's figures (commands: per command)."""
    out = {}
    for key, runs in results.items():
        if key == "commands":
            out[key] = {cmd: {"median_ms": med([r[cmd]["median_ms"] for r in runs]),
                              "min_ms": min(r[cmd]["min_ms"] for r in runs),
                              "max_ms": max(r[cmd]["max_ms"] for r in runs),
                              "runs": sum(r[cmd]["runs"] for r in runs)} for cmd in runs[0]}
        else:
            out[key] = {k: med([r[k] for r in runs]) for k in runs[0]} | {"reps": len(runs)}
            for k in ("start_max_ms", "teardown_max_ms", "max_ms"):
                if k in runs[0]:
                    out[key][k] = max(r[k] for r in runs)
    return out


def _verdict(ok: bool, why: str = "") -> str:
    return "PASS" if ok else f"MISS{' (' + why + ')' if why else ''}"


def build_user_table(u, s, info, args):
    """The speed a user feels: each figure beside its anchor from the same run, and the verdicts."""
    out = []
    add = out.append
    add("")
    add("The speed a user feels (bench/user.py): medians across reps; anchors measured in the same run.")
    add("")
    add("| target | auxipc | anchor (same run) | target | verdict |")
    add("|--------|-------:|-------------------|--------|---------|")
    fx, fs = u.get("fixture"), u.get("fixture_spawn")
    if fx:
        anchor = (f"spawn (AUXIPC_ZYGOTE=0): {fs['start_ms']:.0f} ms start, {fs['teardown_ms']:.0f} ms teardown"
                  if fs else "–")
        add(f"| bus per test: auxbus start → broker + parent + child bound (median; max {fx['start_max_ms']:.0f}) | "
            f"{fx['start_ms']:.0f} ms | {anchor} | ≤ {FIXTURE_START_MS} ms | "
            f"{_verdict(fx['start_ms'] <= FIXTURE_START_MS)} |")
        add(f"| bus per test: teardown (median; max {fx['teardown_max_ms']:.0f}) | {fx['teardown_ms']:.0f} ms | "
            f"{'spawn: %.0f ms' % fs['teardown_ms'] if fs else '–'} | ≤ {FIXTURE_TEARDOWN_MS} ms | "
            f"{_verdict(fx['teardown_ms'] <= FIXTURE_TEARDOWN_MS)} |")
        add(f"| bus per test: whole pytest per test ({args.n_fixture} tests; first start {fx['first_start_ms']:.0f} ms "
            f"incl. the zygote) | {fx['per_test_ms']:.0f} ms | "
            f"{'spawn: %.0f ms' % fs['per_test_ms'] if fs else '–'} | (info) | – |")
    cmds = u.get("commands")
    if cmds:
        anchor_key = next(k for k in cmds if k.startswith("anchor"))
        a = cmds[anchor_key]["median_ms"]
        for k, v in cmds.items():
            if k == anchor_key:
                continue
            ok = v["median_ms"] <= COMMAND_MS
            why = "" if ok else ("the machine is slow: the anchor alone takes %.0f ms" % a if a > COMMAND_MS / 1.5
                                 else "imports")
            add(f"| `{k}` wall (median of {v['runs']}; {v['min_ms']:.0f}–{v['max_ms']:.0f}) | {v['median_ms']:.0f} ms | "
                f"`import zmq, msgpack, click`: {a:.0f} ms ({v['median_ms'] / a:.2f}x) | ≤ {COMMAND_MS} ms | "
                f"{_verdict(ok, why)} |")
    rb, rs = u.get("rebound"), u.get("rebound_spawn")
    if rb:
        add(f"| `auxipc up`: SIGKILL driver → bound again (median; {rb['min_ms']:.0f}–{rb['max_ms']:.0f}) | "
            f"{rb['median_ms']:.0f} ms | {'spawn (AUXIPC_ZYGOTE=0): %.0f ms' % rs['median_ms'] if rs else '–'} | "
            f"≤ {REBOUND_MS} ms | {_verdict(rb['median_ms'] <= REBOUND_MS)} |")
    return "\n".join(out)
