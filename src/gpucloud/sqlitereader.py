"""The read process of `sqlitepipe`: SQLite reads answered over a socket, run as
`python -m gpucloud.sqlitereader FD PATH` by the server (never imported by it for more than
the frame format below). It imports the standard library only, so it starts in ~20 ms.

Frames, both ways: a 4-byte big-endian length, then the body. A read is the pickle of
`(sql, params)`; an answer is one byte, `OK` then the marshal of the rows (sqlite3 gives
only ints, floats, text, bytes and None), or `FAILED` then the pickle of the error's class name and
message. Reads are answered in the order they arrive, the answers to what one receive
brought in one write. The connection is `query_only`: this process never writes.
"""

from __future__ import annotations

import marshal
import pickle
import signal
import socket
import sqlite3
import struct
import sys

HEADER = struct.Struct("!I")
OK, FAILED = 0, 1  # an answer's first byte
CHUNK = 1 << 18  # bytes asked of the socket at a time
_OK, _FAILED = bytes([OK]), bytes([FAILED])


def serve(fd: int, path: str) -> None:
    """Answer reads from the socket `fd` until it closes."""
    # Ctrl-C in a terminal reaches the whole process group; the server ends us by closing the
    # socket when it shuts down, and a traceback here would only be noise.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    sock = socket.socket(fileno=fd)
    conn = sqlite3.connect(path, timeout=30, isolation_level=None, check_same_thread=False,
                           cached_statements=512)
    conn.execute("PRAGMA query_only=1")  # this connection only reads
    cur = conn.cursor()
    buf = bytearray()
    while True:
        chunk = sock.recv(CHUNK)
        if not chunk:
            return
        buf += chunk
        out, pos, end = [], 0, len(buf)
        while end - pos >= 4:
            size = HEADER.unpack_from(buf, pos)[0]
            if end - pos - 4 < size:
                break
            sql, params = pickle.loads(buf[pos + 4:pos + 4 + size])
            pos += 4 + size
            try:
                cur.execute(sql, params)
                body = _OK + marshal.dumps(cur.fetchall())
            except Exception as exc:  # the read fails alone; the connection goes on
                body = _FAILED + pickle.dumps((type(exc).__name__, str(exc)))
            out.append(HEADER.pack(len(body)))
            out.append(body)
        del buf[:pos]
        if out:
            sock.sendall(b"".join(out))


if __name__ == "__main__":
    serve(int(sys.argv[1]), sys.argv[2])
