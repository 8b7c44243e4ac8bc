"""A hyco server for the load and evaluation scripts: the one at --url, or `hyco serve` started on
a free port (its stderr drained in the background), ready once /health answers 200."""

import http.client
import re
import subprocess
import threading
import time


def connect_or_start(url, binary, model, server_args):
    """Returns (process or None, host, port) once /health says 200 (up to a minute)."""
    proc = None
    if url:
        m = re.match(r"http://([^:/]+):(\d+)", url)
        host, port = m.group(1), int(m.group(2))
    else:
        cmd = [binary, "serve", "--port", "0"] + (["-m", model] if model else []) + list(server_args)
        proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
        host, port = "127.0.0.1", None
        for line in proc.stderr:
            m = re.search(r"listening on http://[^:]+:(\d+)", line)
            if m:
                port = int(m.group(1))
                break
        if port is None:
            raise RuntimeError(f"{binary} serve exited before listening (status {proc.wait()})")
        threading.Thread(target=lambda: [None for _ in proc.stderr], daemon=True).start()
    for _ in range(600):
        try:
            c = http.client.HTTPConnection(host, port, timeout=5)
            c.request("GET", "/health")
            ok = c.getresponse().status == 200
            c.close()
            if ok:
                break
        except OSError:
            pass
        time.sleep(0.1)
    return proc, host, port
