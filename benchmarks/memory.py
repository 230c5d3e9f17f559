"""Peak memory of one configuration's process tree, sampled while it runs, and its columns in the tables."""

from __future__ import annotations

import threading
from pathlib import Path

MEMORY_COLUMNS = "peak RSS, main process (MiB) | peak PSS, all processes (MiB) | of which anonymous (MiB) |"


class PeakMemory:
    """Peak memory of the process tree (this process and its DataLoader / map workers), sampled every 50 ms
    from /proc/PID/smaps_rollup: total PSS (shared pages split between the processes that map them, so forked
    workers are not counted twice) and its anonymous part. A memory-mapped cache's pages count in PSS/RSS but
    are page cache the kernel reclaims under pressure; anonymous memory is what the processes themselves hold.
    Plus this process's own peak RSS (VmHWM)."""

    def __init__(self):
        self.pss = self.anon = self.rss = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.rss = _proc_fields("self/status")["VmHWM"]

    def _run(self):
        import psutil

        me = psutil.Process()
        while not self._stop.is_set():
            pss = anon = 0
            for process in [me, *me.children(recursive=True)]:
                fields = _proc_fields(f"{process.pid}/smaps_rollup")
                pss, anon = pss + fields.get("Pss", 0), anon + fields.get("Pss_Anon", 0)
            self.pss, self.anon = max(self.pss, pss), max(self.anon, anon)
            self._stop.wait(0.05)


def _proc_fields(name: str) -> dict[str, int]:
    """The 'Key: N kB' lines of a /proc file, in bytes (empty if the process is gone)."""
    try:
        text = Path(f"/proc/{name}").read_text()
    except OSError:
        return {}
    fields = (line.split(":", 1) for line in text.splitlines() if line.endswith(" kB"))
    return {key: int(value.split()[0]) * 1024 for key, value in fields}


def memory_cells(result: dict) -> str:
    """The MEMORY_COLUMNS cells of a measured configuration, in MiB."""
    return " | ".join(f"{result[key] / 2**20:.0f}" for key in ("peak_rss", "peak_pss", "peak_anon")) + " |"
