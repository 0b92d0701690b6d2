#!/usr/bin/env python3
"""A minimal PostgreSQL login client (Python standard library only) for the benchmarks.

It speaks just enough of the v3 protocol to log in with SCRAM-SHA-256 (or trust / cleartext),
which is all the idle-memory and logins-per-second measurements need:

    pgclient.py hold   --port P --user U --password PW --database D -n 10000 [-c 50]
        Opens N connections, logs each in (up to C logins at a time) and keeps them open and
        idle. Prints one JSON line {"ready": ok, "failed": n, "seconds": s, "errors": [...]}
        once every login has finished, then waits until stdin is closed (or SIGTERM) and
        closes them all.

    pgclient.py logins --port P --user U --password PW --database D -n 2000 [-c 50]
        N complete logins (connect, startup, SCRAM, ReadyForQuery, Terminate, close), C at a
        time. Prints one JSON line {"ok": n, "failed": n, "seconds": s, "per_second": r, ...}.

The client checks the server's SCRAM signature like a driver does. A driver runs one PBKDF2
(4096 iterations with PostgreSQL's defaults) per login; to keep the client from being the
bottleneck of a proxy measurement, this one remembers the salted password per (salt,
iterations) and only runs PBKDF2 for a salt it has not seen (--no-cache: every login, like
libpq). PBKDF2 runs on a thread pool (hashlib releases the GIL). Loopback only.
"""

import argparse
import asyncio
import base64
import concurrent.futures
import hashlib
import hmac
import json
import os
import resource
import signal
import struct
import sys
import time

PROTOCOL_3_0 = 196608


class LoginError(Exception):
    pass


def _msg(kind: bytes, payload: bytes) -> bytes:
    return kind + struct.pack("!I", len(payload) + 4) + payload


async def _read_msg(reader):
    head = await reader.readexactly(5)
    kind = head[:1]
    (length,) = struct.unpack("!I", head[1:])
    body = await reader.readexactly(length - 4) if length > 4 else b""
    return kind, body


def _error_text(body: bytes) -> str:
    fields = {}
    for part in body.split(b"\0"):
        if part:
            fields[part[:1].decode()] = part[1:].decode(errors="replace")
    return "%s %s: %s" % (fields.get("S", "?"), fields.get("C", "?"), fields.get("M", "?"))


class Client:
    def __init__(self, host, port, user, password, database, pool, cache=None):
        self.host, self.port = host, port
        self.user, self.password, self.database = user, password, database
        self.pool = pool  # executor for PBKDF2
        self.cache = cache  # dict (salt, iterations) -> salted password, or None
        self.reader = self.writer = None

    async def salted_password(self, salt, iterations):
        key = (salt, iterations)
        if self.cache is not None and key in self.cache:
            return self.cache[key]
        salted = await asyncio.get_running_loop().run_in_executor(
            self.pool, hashlib.pbkdf2_hmac, "sha256", self.password.encode(), salt, iterations
        )
        if self.cache is not None:
            self.cache[key] = salted
        return salted

    async def login(self):
        """Connect and log in; returns once ReadyForQuery arrives."""
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        params = b"user\0" + self.user.encode() + b"\0database\0" + self.database.encode() + b"\0\0"
        payload = struct.pack("!I", PROTOCOL_3_0) + params
        self.writer.write(struct.pack("!I", len(payload) + 4) + payload)
        await self.writer.drain()
        scram = None
        while True:
            kind, body = await _read_msg(self.reader)
            if kind == b"E":
                raise LoginError(_error_text(body))
            if kind == b"R":
                (code,) = struct.unpack("!I", body[:4])
                if code == 0:  # AuthenticationOk
                    continue
                if code == 3:  # cleartext
                    self.writer.write(_msg(b"p", self.password.encode() + b"\0"))
                elif code == 10:  # SASL: list of mechanisms
                    mechs = [m for m in body[4:].split(b"\0") if m]
                    if b"SCRAM-SHA-256" not in mechs:
                        raise LoginError("no SCRAM-SHA-256 in %r" % mechs)
                    nonce = base64.b64encode(os.urandom(18)).decode()
                    first_bare = "n=,r=" + nonce
                    first = ("n,," + first_bare).encode()
                    scram = {"nonce": nonce, "first_bare": first_bare}
                    self.writer.write(
                        _msg(b"p", b"SCRAM-SHA-256\0" + struct.pack("!I", len(first)) + first)
                    )
                elif code == 11:  # SASLContinue: server-first-message
                    server_first = body[4:].decode()
                    attrs = dict(kv.split("=", 1) for kv in server_first.split(","))
                    if not attrs["r"].startswith(scram["nonce"]):
                        raise LoginError("server nonce does not extend ours")
                    salt = base64.b64decode(attrs["s"])
                    iterations = int(attrs["i"])
                    salted = await self.salted_password(salt, iterations)
                    client_key = hmac.new(salted, b"Client Key", "sha256").digest()
                    stored_key = hashlib.sha256(client_key).digest()
                    final_bare = "c=biws,r=" + attrs["r"]
                    auth_message = ",".join([scram["first_bare"], server_first, final_bare]).encode()
                    signature = hmac.new(stored_key, auth_message, "sha256").digest()
                    proof = bytes(a ^ b for a, b in zip(client_key, signature))
                    server_key = hmac.new(salted, b"Server Key", "sha256").digest()
                    scram["server_signature"] = hmac.new(server_key, auth_message, "sha256").digest()
                    final = final_bare + ",p=" + base64.b64encode(proof).decode()
                    self.writer.write(_msg(b"p", final.encode()))
                elif code == 12:  # SASLFinal
                    attrs = dict(kv.split("=", 1) for kv in body[4:].decode().split(","))
                    if base64.b64decode(attrs.get("v", "")) != scram["server_signature"]:
                        raise LoginError("bad server signature")
                    continue
                else:
                    raise LoginError("unsupported authentication request %d" % code)
                await self.writer.drain()
            elif kind == b"Z":
                return
            # ParameterStatus, BackendKeyData, NoticeResponse: ignore

    async def terminate(self):
        if self.writer is None:
            return
        try:
            self.writer.write(_msg(b"X", b""))
            await self.writer.drain()
        except (ConnectionError, OSError):
            pass
        self.close()

    def close(self):
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def raise_nofile():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


async def _hold(args):
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=args.threads)
    cache = None if args.no_cache else {}
    sem = asyncio.Semaphore(args.concurrency)
    clients, errors = [], []
    failed = 0

    async def one():
        nonlocal failed
        async with sem:
            c = Client(args.host, args.port, args.user, args.password, args.database, pool, cache)
            try:
                await c.login()
                clients.append(c)
            except (LoginError, OSError, asyncio.IncompleteReadError) as e:
                failed += 1
                c.close()
                if len(errors) < 5:
                    errors.append(repr(e))

    start = time.monotonic()
    await asyncio.gather(*(one() for _ in range(args.n)))
    took = time.monotonic() - start
    print(json.dumps({"ready": len(clients), "failed": failed, "seconds": took, "errors": errors}), flush=True)

    # Idle until stdin closes (the harness closes it) or SIGTERM.
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)

    fd = sys.stdin.fileno()

    def stdin_readable():
        if not os.read(fd, 4096):  # EOF: the harness is done measuring
            loop.remove_reader(fd)
            stop.set()

    loop.add_reader(fd, stdin_readable)
    await stop.wait()
    for c in clients:
        c.close()
    await asyncio.sleep(0.2)


async def _logins(args):
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=args.threads)
    cache = None if args.no_cache else {}
    sem = asyncio.Semaphore(args.concurrency)
    ok = failed = 0
    errors = []

    async def one():
        nonlocal ok, failed
        async with sem:
            c = Client(args.host, args.port, args.user, args.password, args.database, pool, cache)
            try:
                await c.login()
                await c.terminate()
                ok += 1
            except (LoginError, OSError, asyncio.IncompleteReadError) as e:
                failed += 1
                c.close()
                if len(errors) < 5:
                    errors.append(repr(e))

    start = time.monotonic()
    await asyncio.gather(*(one() for _ in range(args.n)))
    took = time.monotonic() - start
    print(
        json.dumps(
            {"ok": ok, "failed": failed, "seconds": took, "per_second": ok / took if took else 0.0, "errors": errors}
        ),
        flush=True,
    )


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("action", choices=["hold", "logins"])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--user", required=True)
    p.add_argument("--password", default=os.environ.get("PGPASSWORD", ""))
    p.add_argument("--database", required=True)
    p.add_argument("-n", type=int, default=1000, help="connections / logins")
    p.add_argument("-c", "--concurrency", type=int, default=50, help="logins in flight at once")
    p.add_argument("--no-cache", action="store_true", help="run PBKDF2 at every login, like libpq")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 2, help="PBKDF2 worker threads")
    args = p.parse_args()
    raise_nofile()
    asyncio.run(_hold(args) if args.action == "hold" else _logins(args))


if __name__ == "__main__":
    main()
