"""How much logging one tracking server with SQLite behind it takes: ``python -m benchmarks.tracking_server``.

Starts ``mlflow server`` as ``make server`` does (SQLite store, artifacts served, no job
runner) on a free port in a scratch folder. Then, for each client count N (default 1, 4,
8), N processes each create a run and log epoch-like batches (one ``runs/log-batch`` of
``--metrics`` metrics at one step, as the Keras callback logs an epoch) as fast as the
server answers, for ``--seconds``. Reports requests/s over all clients, median and p95
latency, and errors: any answer but HTTP 200, or none within ``TIMEOUT``. Requests go
without MLflow's client retries, so an overloaded store shows up as errors, not as hidden
latency. Clients run on the same machine, so they share its cores with the server; the
1-minute load average before each level shows other work on the machine too.

    python -m benchmarks.tracking_server [--clients 1 4 8] [--seconds 10] [--workers 1] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

#: Seconds a request may take before it counts as an error.
TIMEOUT = 30
#: Seconds the server gets to start (a new SQLite store is migrated first).
START_TIMEOUT = 120


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.tracking_server", description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 8], help="client counts, one level each")
    parser.add_argument("--seconds", type=float, default=10.0, help="logging time of each level")
    parser.add_argument("--metrics", type=int, default=6, help="metrics in each batch (one epoch)")
    parser.add_argument("--workers", type=int, default=1,
                        help="server worker processes (1 as `make server`; mlflow server's own default is 4)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    return parser.parse_args(argv)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(folder: Path, workers: int) -> tuple[subprocess.Popen, str]:
    """``mlflow server`` in its own process group, answering on a free port; returns it and its URL."""
    import requests

    port = free_port()
    mlflow = Path(sys.executable).with_name("mlflow")
    command = [str(mlflow), "server", "--host", "127.0.0.1", "--port", str(port),
               "--backend-store-uri", f"sqlite:///{folder}/mlflow-server.db", "--serve-artifacts",
               "--artifacts-destination", str(folder / "artifacts"), "--workers", str(workers)]
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    with (folder / "server.log").open("w") as log:
        server = subprocess.Popen(command, cwd=folder, env=env, stdout=log, stderr=subprocess.STDOUT,
                                  stdin=subprocess.DEVNULL, start_new_session=True)
    url, deadline = f"http://127.0.0.1:{port}", time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline and server.poll() is None:
        try:
            if requests.get(f"{url}/health", timeout=2).ok:
                return server, url
        except requests.RequestException:
            pass
        time.sleep(0.2)
    stop_server(server)
    raise RuntimeError(f"mlflow server did not answer within {START_TIMEOUT} s; see {folder / 'server.log'}")


def stop_server(server: subprocess.Popen) -> None:
    """Stop the server's whole process group (its workers too)."""
    for sig, wait in ((signal.SIGTERM, 15), (signal.SIGKILL, 5)):
        try:
            os.killpg(server.pid, sig)
            server.wait(wait)
            return
        except ProcessLookupError:
            return
        except subprocess.TimeoutExpired:
            continue


def client(url: str, experiment_id: str, index: int, metrics: int, start_at: float, seconds: float) -> dict:
    """One client: create a run at ``start_at``, then log batches for ``seconds``; latencies and errors."""
    import requests

    session = requests.Session()
    time.sleep(max(0.0, start_at - time.time()))
    api = f"{url}/api/2.0/mlflow"
    created = session.post(f"{api}/runs/create", json={"experiment_id": experiment_id, "run_name": f"client-{index}",
                                                       "start_time": int(time.time() * 1000)}, timeout=TIMEOUT)
    created.raise_for_status()
    run_id = created.json()["run"]["info"]["run_id"]
    latencies, errors, first_error, step = [], 0, "", 0
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        now = int(time.time() * 1000)
        batch = {"run_id": run_id, "metrics": [{"key": f"metric_{k}", "value": 1.0 / (step + k + 1), "timestamp": now,
                                                "step": step} for k in range(metrics)]}
        started = time.perf_counter()
        try:
            answer = session.post(f"{api}/runs/log-batch", json=batch, timeout=TIMEOUT)
            failed = "" if answer.status_code == 200 else f"HTTP {answer.status_code}: {answer.text[:160]}"
        except requests.RequestException as error:
            failed = f"{type(error).__name__}: {str(error)[:160]}"
        latencies.append(time.perf_counter() - started)
        if failed:
            errors, first_error = errors + 1, first_error or failed
        step += 1
    return {"latencies": latencies, "errors": errors, "first_error": first_error}


def level(url: str, experiment_id: str, clients: int, args: argparse.Namespace) -> dict:
    """N clients logging at once; requests/s over the level's wall time, latency percentiles, errors."""
    load = os.getloadavg()[0]
    context = multiprocessing.get_context("spawn")
    with context.Pool(clients) as pool:
        start_at = time.time() + 3  # every client process is up by then
        results = pool.starmap(client, [(url, experiment_id, index, args.metrics, start_at, args.seconds)
                                        for index in range(clients)])
    latencies = sorted(latency for result in results for latency in result["latencies"])
    errors = sum(result["errors"] for result in results)
    return {"clients": clients, "requests": len(latencies), "requests_per_s": len(latencies) / args.seconds,
            "metrics_per_s": len(latencies) * args.metrics / args.seconds,
            "p50_ms": 1000 * statistics.median(latencies),
            "p95_ms": 1000 * latencies[min(len(latencies) - 1, int(0.95 * len(latencies)))],
            "max_ms": 1000 * latencies[-1], "errors": errors, "load_before": load,
            "first_error": next((r["first_error"] for r in results if r["first_error"]), "")}


def main(argv: list[str] | None = None) -> None:
    import requests

    args = parse(argv)
    with tempfile.TemporaryDirectory(prefix="tracking-server-") as tmp:
        server, url = start_server(Path(tmp), args.workers)
        try:
            created = requests.post(f"{url}/api/2.0/mlflow/experiments/create", json={"name": "load"}, timeout=TIMEOUT)
            created.raise_for_status()
            experiment_id = created.json()["experiment_id"]
            results = []
            for clients in args.clients:
                results.append(level(url, experiment_id, clients, args))
                print_row(results[-1], header=len(results) == 1, args=args)
        finally:
            stop_server(server)
    if args.json:
        args.json.write_text(json.dumps({"cores": os.cpu_count(), "server_workers": args.workers,
                                         "metrics_per_batch": args.metrics, "seconds": args.seconds,
                                         "levels": results}, indent=2) + "\n")


def print_row(row: dict, header: bool, args: argparse.Namespace) -> None:
    if header:
        print(f"mlflow server, SQLite, {args.workers} workers, {os.cpu_count()} cores; log-batch of "
              f"{args.metrics} metrics, {args.seconds:g} s per level")
        print(f"{'clients':>7} {'requests/s':>10} {'metrics/s':>9} {'p50 ms':>7} {'p95 ms':>7} {'max ms':>7} "
              f"{'errors':>6} {'load':>5}")
    print(f"{row['clients']:>7} {row['requests_per_s']:>10.1f} {row['metrics_per_s']:>9.0f} {row['p50_ms']:>7.1f} "
          f"{row['p95_ms']:>7.1f} {row['max_ms']:>7.0f} {row['errors']:>6} {row['load_before']:>5.1f}"
          + (f"  first error: {row['first_error']}" if row["first_error"] else ""), flush=True)


if __name__ == "__main__":
    main()
