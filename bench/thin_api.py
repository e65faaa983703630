"""The thinnest HTTP server of the fleet read, the ceiling any Python API on one worker reaches
for it on this machine: `GET /query/{id}/1m?from=&to=` answered with the same statement as the
query API, through the fastest driver measured (acsylla), uvicorn with httptools and uvloop, and
orjson; no token, no tenant check, no validation, no cache, no paging. Whatever a real API adds
only costs more, so its rate beside the raw driver's bounds what the API can reach.

A bench aid, never a service: it runs in a throwaway virtualenv (bench/fleet_reads.py makes
it), so it imports its own packages and the standard library only.

    python bench/thin_api.py --port 18090 --cassandra-port 9042 --cql "SELECT ..."
"""

from __future__ import annotations

import argparse
import time
from typing import Any
from urllib.parse import parse_qsl

import acsylla
import orjson
import uvicorn

_ISO: dict[int, str] = {}


def _iso(millis: int) -> str:
    text = _ISO.get(millis)
    if text is None:
        text = _ISO[millis] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(millis / 1000))
    return text


class ThinApi:
    def __init__(self, cassandra_port: int, cql: str) -> None:
        self._port, self._cql = cassandra_port, cql
        self._session: Any = None
        self._prepared: Any = None

    async def _start(self) -> None:
        cluster = acsylla.create_cluster(["127.0.0.1"], port=self._port, protocol_version=4)
        self._session = await cluster.create_session(keyspace="iot")
        self._prepared = await self._session.create_prepared(self._cql)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await receive()  # startup
            await self._start()
            await send({"type": "lifespan.startup.complete"})
            await receive()  # shutdown
            await send({"type": "lifespan.shutdown.complete"})
            return
        device = scope["path"].split("/")[2]
        query = dict(parse_qsl(scope["query_string"].decode()))
        start, end = int(query["from"]), int(query["to"])
        statement = self._prepared.bind()
        # acsylla binds a timestamp from epoch seconds.
        statement.bind_list([device, time.strftime("%Y-%m", time.gmtime(start / 1000)),
                             start / 1000, end / 1000, 10_001])
        result = await self._session.execute(statement)
        items = [
            {"deviceId": device, "metric": r[2], "windowStart": _iso(r[0]), "windowEnd": _iso(r[1]),
             "count": r[3], "sum": r[4], "min": r[5], "max": r[6], "avg": r[7]}
            for r in (row.as_tuple() for row in result.all())
        ]
        body = orjson.dumps({"deviceId": device, "window": "1m", "items": items, "next": None})
        await send({"type": "http.response.start", "status": 200, "headers": [
            (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--cassandra-port", type=int, required=True)
    parser.add_argument("--cql", required=True)
    args = parser.parse_args()
    uvicorn.run(ThinApi(args.cassandra_port, args.cql), host="127.0.0.1", port=args.port, loop="uvloop",
                http="httptools", access_log=False, log_level="warning")


if __name__ == "__main__":
    main()
