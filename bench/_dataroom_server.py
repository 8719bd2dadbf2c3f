"""The Dataroom test server (tests/dataroom_server.py) in its own process, for `compare.py --suite db`.

    python bench/_dataroom_server.py --root CORPUS_DIR --source BENCH --latency 0.02 [--log LOG]

Adds one record per image of the folder (id = file stem, the image bytes as its blob, source
`--source`), starts the server with `latency_s` on every response (pages, records and blobs),
and prints one JSON line: `{"api_url": ..., "token": ..., "records": n}`. Then it answers
commands on stdin, one per line, with one JSON line on stdout:

  stats    requests, statuses, body bytes and incomplete responses per endpoint so far, and
           the page requests' query strings (the last 50)
  stop     (or end of input) stops the server and exits; with --log the whole request log is
           written there first, one JSON object per request
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from dataroom_server import DataroomServer  # noqa: E402

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png"}


def stats(server: DataroomServer) -> dict:
    log = server.requests()
    requests: Counter[str] = Counter()
    statuses: Counter[str] = Counter()
    body: Counter[str] = Counter()
    incomplete: Counter[str] = Counter()
    for request in log:
        requests[request.endpoint] += 1
        statuses[f"{request.endpoint} {request.status}"] += 1
        body[request.endpoint] += request.bytes_sent
        incomplete[request.endpoint] += not request.complete
    pages = [r.raw_query for r in log if r.endpoint in ("list", "random")]
    return {"requests": requests, "statuses": statuses, "bytes": body, "incomplete": incomplete, "page_queries": pages[-50:]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, required=True, help="folder of images: one record each")
    parser.add_argument("--source", default="BENCH", help="the records' `source`")
    parser.add_argument("--latency", type=float, default=0.02, help="seconds added to every response")
    parser.add_argument("--log", type=Path, help="write the request log here (JSON lines) on stop")
    args = parser.parse_args()
    server = DataroomServer(latency_s=args.latency)
    paths = sorted(p for p in args.root.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    for path in paths:
        server.add_image(path.stem, source=args.source, image=path.read_bytes())
    server.start()
    print(json.dumps({"api_url": server.api_url, "token": server.token, "records": len(paths)}), flush=True)
    try:
        for line in sys.stdin:
            command = line.strip()
            if command == "stats":
                print(json.dumps(stats(server)), flush=True)
            elif command == "stop":
                break
            else:
                print(json.dumps({"error": f"unknown command {command!r}"}), flush=True)
    finally:
        if args.log is not None:
            with args.log.open("w") as out:
                for r in server.requests():
                    out.write(json.dumps({
                        "seq": r.sequence, "endpoint": r.endpoint, "method": r.method, "path": r.path,
                        "query": r.raw_query, "status": r.status, "bytes": r.bytes_sent, "complete": r.complete,
                        "authorization": r.header("Authorization") is not None,
                    }) + "\n")
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
