#!/usr/bin/env python3
"""Memory per parked connection in steady state (issue 22): opens BATCHES batches of N keep-alive
connections to a target, one request each, lets them idle past the 2 s after which Portcullis
parks them, and prints the target's RSS growth per connection after each batch (the first
includes the allocator's warm-up; the later ones show what one more idle connection costs).

  bench/parked.py PORT PID [N] [BATCHES]      (defaults: 5000 connections, 3 batches)
"""
import resource, socket, sys, time


def rss_kib(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def main():
    port, pid = int(sys.argv[1]), int(sys.argv[2])
    n = int(sys.argv[3]) if len(sys.argv) > 3 else 5000
    batches = int(sys.argv[4]) if len(sys.argv) > 4 else 3
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    held, start = [], rss_kib(pid)
    for batch in range(batches):
        before = rss_kib(pid)
        conns = []
        for _ in range(n):
            s = socket.create_connection(("127.0.0.1", port))
            s.sendall(b"GET /private/x HTTP/1.1\r\nHost: a\r\n\r\n")
            conns.append(s)
        for s in conns:
            s.recv(65536)
        time.sleep(3)
        after = rss_kib(pid)
        held += conns
        print(f"batch {batch + 1}: {n} connections, {(after - before) / n:+.1f} KiB each; "
              f"{len(held)} open, {(after - start) / len(held):.1f} KiB each in all")


main()
