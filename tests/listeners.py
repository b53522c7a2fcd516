"""What a run listens on: the local-run rule is loopback only (docs/security.md, "the cluster's ports")."""

from __future__ import annotations

import ipaddress


class Listeners:
    """Every listening TCP socket of this process and its descendants (a local Ray's GCS, raylet, agents,
    workers and actors; an SFT run's store and workers), sampled from a thread while a run goes:
    {(process name, address)}."""

    def __init__(self, every_s: float = 1.0):  # servers live for the whole run: a slow poll sees them all
        import threading

        self.seen: set[tuple[str, str]] = set()
        self._stop, self.every_s = threading.Event(), every_s
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        import psutil

        while not self._stop.is_set():
            me = psutil.Process()
            for proc in [me, *me.children(recursive=True)]:
                try:
                    name = proc.name()
                    self.seen |= {(name, c.laddr.ip) for c in proc.net_connections("inet") if c.status == "LISTEN"}
                except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                    continue  # exited between the listing and the look
            self._stop.wait(self.every_s)

    def __enter__(self) -> Listeners:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def beyond_loopback(self) -> list[tuple[str, str]]:
        def loopback(ip: str) -> bool:
            address = ipaddress.ip_address(ip)
            mapped = getattr(address, "ipv4_mapped", None)  # ::ffff:127.0.0.1
            return (mapped or address).is_loopback

        return sorted((name, ip) for name, ip in self.seen if not loopback(ip))
