"""Floor cases: the same traffic with nothing but pyzmq + msgpack, for comparison.

Every end is its own OS process, started by ``bench/run.py`` with multiprocessing
``spawn`` (never fork):

- ``router_echo`` + ``dealer_client``: direct DEALER -> ROUTER round trip;
- ``forwarder`` + ``dealer_worker`` + ``dealer_client``: a minimal Python
  ROUTER/ROUTER broker forwarding frames untouched (anchors case 3);
- ``pub_sender`` + ``sub_receiver`` (+ ``proxy`` XSUB/XPUB): PUB -> SUB
  throughput, HWM unlimited (anchors case 4).

Payload: the anchors' 55-byte msgpack envelope; the client packs it, the far end
unpacks and repacks it, the client unpacks it and checks ``seq``.
"""

from __future__ import annotations

import time


def envelope(seq):
    return {"v": 1, "ev": 7, "dev": "ixd.eth.0", "seq": seq, "payload": {"speed": 100000, "up": True}}


def _ctx():
    import zmq
    return zmq.Context(io_threads=1)


def _sock(ctx, kind, *, rcvtimeo=None, hwm=None):
    import zmq
    s = ctx.socket(kind)
    s.setsockopt(zmq.LINGER, 0)
    if rcvtimeo is not None:
        s.setsockopt(zmq.RCVTIMEO, rcvtimeo)
    if hwm is not None:
        s.setsockopt(zmq.SNDHWM, hwm)
        s.setsockopt(zmq.RCVHWM, hwm)
    return s


def rt_loop(n_warm, n, once, on_started=None):
    """``once(seq)`` n_warm times untimed, then n times timed (ns); ``on_started()`` runs
    between the two (the driver samples CPU times then)."""
    for i in range(n_warm):
        once(i)
    if on_started is not None:
        on_started()
    lat = [0] * n
    pc = time.perf_counter_ns
    t_start = pc()
    for i in range(n):
        t0 = pc()
        once(n_warm + i)
        lat[i] = pc() - t0
    return lat, pc() - t_start


def _echo(s, stop):
    """Unpack and repack every request and send it back, until ``stop`` is set."""
    import zmq
    from msgpack import packb, unpackb
    recv, send = s.recv_multipart, s.send_multipart
    while True:
        try:
            cid, body = recv()
        except zmq.Again:
            if stop.is_set():
                break
            continue
        send([cid, packb(unpackb(body))])
    s.close()


# ---- round trips -------------------------------------------------------------------

def router_echo(endpoint, ready, stop):
    """Direct far end: ROUTER, unpack + repack, reply to the sender."""
    import zmq
    ctx = _ctx()
    s = _sock(ctx, zmq.ROUTER, rcvtimeo=200)
    s.bind(endpoint)
    ready.set()
    _echo(s, stop)
    ctx.term()


def forwarder(front_ep, back_ep, ready, worker_ready, stop):
    """Minimal Python broker: ROUTER front, ROUTER back, route by service name."""
    import zmq
    ctx = _ctx()
    front = _sock(ctx, zmq.ROUTER)
    back = _sock(ctx, zmq.ROUTER)
    front.bind(front_ep)
    back.bind(back_ep)
    poller = zmq.Poller()
    poller.register(front, zmq.POLLIN)
    poller.register(back, zmq.POLLIN)
    workers = {}
    ready.set()
    f_recv, f_send = front.recv_multipart, front.send_multipart
    b_recv, b_send = back.recv_multipart, back.send_multipart
    while True:
        events = dict(poller.poll(200))
        if not events:
            if stop.is_set():
                break
            continue
        if front in events:
            cid, svc, body = f_recv()
            wid = workers.get(svc)
            if wid is None:
                f_send([cid, b"ERR no such service"])
            else:
                b_send([wid, cid, body])
        if back in events:
            wid, cid, body = b_recv()
            if cid == b"READY":
                workers[body] = wid
                worker_ready.set()
                continue
            f_send([cid, body])
    front.close()
    back.close()
    ctx.term()


def dealer_worker(back_ep, name, stop):
    import zmq
    ctx = _ctx()
    s = _sock(ctx, zmq.DEALER, rcvtimeo=200)
    s.connect(back_ep)
    s.send_multipart([b"READY", name])
    _echo(s, stop)
    ctx.term()


def dealer_client(endpoint, svc, n_warm, n, started, stop, conn):
    """DEALER client; ``svc`` None: direct to a ROUTER echo, else through the forwarder.
    Stays until ``stop`` so that the driver can sample its CPU time."""
    import zmq
    from msgpack import packb, unpackb
    ctx = _ctx()
    s = _sock(ctx, zmq.DEALER)
    s.connect(endpoint)
    send, recv = s.send_multipart, s.recv
    head = [] if svc is None else [svc]

    def once(i):
        send(head + [packb(envelope(i))])
        if unpackb(recv())["seq"] != i:
            raise RuntimeError("seq mismatch")

    lat, total = rt_loop(n_warm, n, once, started.set if started is not None else None)
    conn.send({"lat": lat, "total_ns": total})
    stop.wait(30)
    s.close()
    ctx.term()


# ---- pub/sub throughput --------------------------------------------------------------

PROBE = b"P"      # not a msgpack map: distinguishable from the envelope
END = b"E"


def proxy(front_ep, back_ep, ready):
    """zmq.proxy XSUB -> XPUB, HWM unlimited; ended by SIGTERM from the driver."""
    import zmq
    ctx = _ctx()
    front = _sock(ctx, zmq.XSUB, hwm=0)
    back = _sock(ctx, zmq.XPUB, hwm=0)
    front.bind(front_ep)
    back.bind(back_ep)
    ready.set()
    zmq.proxy(front, back)


def sub_receiver(endpoint, n_warm, joined, done, conn):
    import zmq
    from msgpack import unpackb
    ctx = _ctx()
    s = _sock(ctx, zmq.SUB, rcvtimeo=10000, hwm=0)
    s.setsockopt(zmq.SUBSCRIBE, b"")
    s.connect(endpoint)
    recv = s.recv
    pc = time.perf_counter_ns
    count = gaps = 0
    t_first = t_last = 0
    last_seq = -1
    timed_out = False
    while True:
        try:
            msg = recv()
        except zmq.Again:
            timed_out = True
            break
        if msg == PROBE:
            joined.set()
            continue
        if msg == END:
            done.set()
            break
        d = unpackb(msg)
        count += 1
        if d["seq"] != last_seq + 1:
            gaps += 1
        last_seq = d["seq"]
        if count == n_warm:
            t_first = pc()
        elif count > n_warm:
            t_last = pc()
    conn.send({"received": count, "timed_n": max(count - n_warm, 0), "t_first": t_first,
               "t_last": t_last, "gaps": gaps, "timed_out": timed_out})
    s.close()
    ctx.term()


def pub_sender(endpoint, bind, n_warm, n, joined, done, started, stop, conn):
    import zmq
    from msgpack import packb
    ctx = _ctx()
    s = _sock(ctx, zmq.PUB, hwm=0)
    if bind:
        s.bind(endpoint)
    else:
        s.connect(endpoint)
    deadline = time.monotonic() + 10          # slow joiner: probe until the SUB saw one
    while not joined.is_set():
        s.send(PROBE)
        time.sleep(0.005)
        if time.monotonic() > deadline:
            raise RuntimeError("subscriber never joined")
    send = s.send
    for i in range(n_warm):
        send(packb(envelope(i)))
    started.set()
    pc = time.perf_counter_ns
    t0 = pc()
    for i in range(n_warm, n_warm + n):
        send(packb(envelope(i)))
    t1 = pc()
    deadline = time.monotonic() + 30
    while not done.is_set() and time.monotonic() < deadline:
        send(END)
        done.wait(0.005)
    stop.wait(30)          # stay until the driver has sampled our CPU time
    conn.send({"sent": n_warm + n, "send_ns": t1 - t0})
    s.close()
    ctx.term()
