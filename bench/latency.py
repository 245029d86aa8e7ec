"""Benchmark PIPELINING over a slow link: `bulkmail run` through a delaying proxy, against a
sink that offers PIPELINING and one that does not.

    python bench/latency.py                  # 300 mails, 5 ms each way (a 10 ms round trip)
    python bench/latency.py --delay-ms 20 --rows 200 --repeat 3

On loopback a round trip costs next to nothing, so the bench's other rows cannot show
what PIPELINING is for: a relay across the internet answers each command a round trip
later. Here a TCP proxy on 127.0.0.1 (asyncio, in this process) holds every chunk
``--delay-ms`` before passing it on, in each direction and in order; TLS goes through it
untouched. Each mode runs the example newsletter (no attachment) from a new journal; the
rate is the sending phase (the report's ``elapsed_seconds``), medians of ``--repeat``,
modes interleaved. Without PIPELINING a mail costs four round trips (MAIL, RCPT, DATA,
end of data); with it, two.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import generate as gen
import trustme
from run import PASSWORD, USER, Sink, log


class DelayingProxy:
    """127.0.0.1:<port> -> 127.0.0.1:``target``, each chunk held ``delay`` seconds."""

    def __init__(self, target: int, delay: float) -> None:
        self.target = target
        self.delay = delay
        self.loop = asyncio.new_event_loop()
        started = threading.Event()
        self.port = 0

        async def serve() -> None:
            server = await asyncio.start_server(self._connection, "127.0.0.1", 0)
            self.port = server.sockets[0].getsockname()[1]
            started.set()
            async with server:
                await server.serve_forever()

        def run() -> None:
            with contextlib.suppress(asyncio.CancelledError):
                self.loop.run_until_complete(serve())
            rest = asyncio.all_tasks(self.loop)  # the connections, cancelled by close()
            if rest:
                self.loop.run_until_complete(asyncio.gather(*rest, return_exceptions=True))
            self.loop.close()

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()
        started.wait(10)

    def close(self) -> None:
        """End every connection and stop serving."""

        def cancel_all() -> None:
            for task in asyncio.all_tasks(self.loop):
                task.cancel()

        self.loop.call_soon_threadsafe(cancel_all)
        self._thread.join(10)

    async def _connection(
        self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter
    ) -> None:
        server_r, server_w = await asyncio.open_connection("127.0.0.1", self.target)
        await asyncio.gather(self._pipe(client_r, server_w), self._pipe(server_r, client_w))

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Pass what ``reader`` gets on to ``writer``, each chunk ``delay`` later."""
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def forward() -> None:
            with contextlib.suppress(ConnectionError):
                while True:
                    due, data = await queue.get()
                    await asyncio.sleep(max(0.0, due - time.monotonic()))
                    if not data:
                        break
                    writer.write(data)
                    await writer.drain()
            writer.close()

        task = asyncio.create_task(forward())
        data = b"-"
        while data:
            try:
                data = await reader.read(1 << 16)
            except ConnectionError:
                data = b""
            await queue.put((time.monotonic() + self.delay, data))
        await task


def run_once(campaign: Path, rows: int, sink: Sink) -> float:
    """One `bulkmail run` from a new journal: its sending phase's rate (mails/s)."""
    shutil.rmtree(gen.journal_dir(campaign), ignore_errors=True)
    sink.reset()
    env = {k: v for k, v in os.environ.items() if not k.startswith("BULKMAIL_")}
    env[gen.PASSWORD_ENV] = PASSWORD
    done = subprocess.run(
        [sys.executable, "-m", "bulkmail", "run", str(campaign), "--yes", "--json"],
        env=env,
        capture_output=True,
        timeout=600,
        check=False,
    )
    report = json.loads(done.stdout or b"{}")
    if done.returncode != 0 or report.get("accepted") != rows or sink.stats()["count"] != rows:
        raise SystemExit(f"bulkmail run failed (exit {done.returncode}): {done.stderr.decode()}")
    return rows / float(report["elapsed_seconds"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=300)
    parser.add_argument("--delay-ms", type=float, default=5.0, help="one way (default 5)")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    rates: dict[str, list[float]] = {"without": [], "with": []}
    with tempfile.TemporaryDirectory(prefix="bulkmail-bench-") as tmp:
        folder = Path(tmp)
        ca = trustme.CA()
        ca_file = folder / "ca.pem"
        ca.cert_pem.write_to_path(str(ca_file))
        sinks: dict[str, Sink] = {}
        for mode, options in (("without", ()), ("with", ("--pipelining",))):
            (folder / mode).mkdir()
            sinks[mode] = Sink(folder / mode, ca, *options)
        templates = gen.write_templates(folder / "templates")
        recipients = gen.write_list(folder / "list.csv", args.rows)
        campaigns = {}
        proxies: list[DelayingProxy] = []
        try:
            for mode, sink in sinks.items():
                proxy = DelayingProxy(sink.port, args.delay_ms / 1000)
                proxies.append(proxy)
                campaigns[mode] = gen.write_campaign(
                    folder / mode / "campaign",
                    name=f"bench-latency-{mode}",
                    recipients=recipients,
                    templates=templates,
                    port=proxy.port,
                    ca_file=ca_file,
                    username=USER,
                    attachment=None,
                )
            for round_ in range(args.repeat):
                for mode, sink in sinks.items():  # interleaved
                    rate = run_once(campaigns[mode], args.rows, sink)
                    rates[mode].append(rate)
                    log(f"round {round_ + 1}: {mode} PIPELINING: {rate:.1f} mails/s")
        finally:
            for proxy in proxies:
                proxy.close()
            for sink in sinks.values():
                sink.close()
    without = statistics.median(rates["without"])
    with_ = statistics.median(rates["with"])
    round_trip = 2 * args.delay_ms
    print(f"{args.rows:,} mails, {round_trip:g} ms round trip, medians of {args.repeat}")
    print("| the relay | sending phase | ratio |")
    print("|---|---|---|")
    print(f"| without PIPELINING | {without:,.1f}/s | 1.00 |")
    print(f"| with PIPELINING | {with_:,.1f}/s | {with_ / without:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
