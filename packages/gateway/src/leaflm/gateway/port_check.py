"""Find a busy listen address before the model loads, not after.

Loading a model takes seconds to minutes; uvicorn binds only afterwards, so a port already in
use used to surface as `[Errno 98]` once the wait was over. `address_problem` binds the address
the way uvicorn will (SO_REUSEADDR, same family) and releases it at once, and names the process
holding it when psutil can see it.
"""

from __future__ import annotations

import errno
import socket


def address_problem(host: str, port: int) -> str | None:
    """None if `host:port` can be bound now, else a sentence saying why not (and who holds it)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((host, port))
    except OSError as exc:
        where = f"[{host}]:{port}" if family == socket.AF_INET6 else f"{host}:{port}"
        if exc.errno == errno.EADDRINUSE:
            holder = port_holder(port)
            held = f" (held by {holder})" if holder else ""
            return f"address {where} is already in use{held}; pick another with --port"
        return f"cannot listen on {where}: {exc.strerror or exc}"
    return None


def port_holder(port: int) -> str | None:
    """'pid N (command line)' of a process with a TCP socket bound to `port`, if visible."""
    try:
        import psutil
    except ImportError:
        return None
    try:
        conns = psutil.net_connections(kind="tcp")
    except (psutil.AccessDenied, OSError):
        return None
    pids = sorted({c.pid for c in conns if c.laddr and c.laddr.port == port and c.pid})
    for pid in pids:
        try:
            cmd = " ".join(psutil.Process(pid).cmdline()) or psutil.Process(pid).name()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            return f"pid {pid}"
        return f"pid {pid}: {' '.join(cmd.split())[:200]}"
    return None
