#!/usr/bin/env python3
"""Memory per idle keep-alive connection (issue 22): opens N connections to a target, sends one
request on each, keeps them open and idle, and reports the growth of the target's resident
memory per connection (all its processes). Usage:

  bench/connections.py PORT PID [N]      (PID: the target's main process; its children count)
"""
import os, resource, socket, sys, time

def rss_kib(pid):
    pids = [pid]
    try:
        pids += [int(p) for p in open(f"/proc/{pid}/task/{pid}/children").read().split()]
    except OSError:
        pass
    total = 0
    for p in pids:
        for line in open(f"/proc/{p}/status"):
            if line.startswith("VmRSS:"):
                total += int(line.split()[1])
    return total

def main():
    port, pid = int(sys.argv[1]), int(sys.argv[2])
    n = int(sys.argv[3]) if len(sys.argv) > 3 else 10000
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    # Warm: a few connections first so allocator arenas exist before measuring.
    warm = []
    for _ in range(50):
        s = socket.create_connection(("127.0.0.1", port)); s.sendall(b"GET /private/x HTTP/1.1\r\nHost: a\r\n\r\n"); warm.append(s)
    time.sleep(0.5)
    for s in warm:
        s.recv(65536)
    before = rss_kib(pid)
    conns = []
    for i in range(n):
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall(b"GET /private/x HTTP/1.1\r\nHost: a\r\nUser-Agent: bench\r\nAccept: */*\r\n\r\n")
        conns.append(s)
        if i % 500 == 499:
            for c in conns[-500:]:
                c.recv(65536)
    for c in conns[n - n % 500:]:
        c.recv(65536)
    # Idle: longer than the 2 s after which Portcullis parks an idle connection (hyper's
    # buffers freed); nginx frees its buffers at once.
    time.sleep(4)
    after = rss_kib(pid)
    alive, closed, failed = 0, 0, 0
    for c in conns:
        c.setblocking(False)
        try:
            if c.recv(1) == b"":
                closed += 1
            else:
                alive += 1
        except BlockingIOError:
            alive += 1
        except OSError:
            failed += 1
    print(f"connections={n} alive={alive} closed={closed} failed={failed} rss_before_kib={before} rss_after_kib={after} per_connection_kib={(after - before) / n:.1f}")

main()
