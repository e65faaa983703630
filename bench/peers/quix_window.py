"""The Python peer of the Flink job: the same 1-minute tumbling aggregation in quixstreams.

Run in its own virtualenv (bench/flink.py makes it): consumes TOPIC from the start, aggregates
per device and metric in 1-minute event-time windows, and stops after COUNT readings, printing
the seconds it took from its first message.
"""

import json
import sys
import time
from datetime import timedelta
from typing import Any

from quixstreams import Application

bootstrap, topic_name, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
app = Application(
    broker_address=bootstrap,
    consumer_group=f"quix-{time.time_ns()}",
    auto_offset_reset="earliest",
    loglevel="WARNING",
    state_dir=f"/tmp/quix-state-{time.time_ns()}",
)
topic = app.topic(
    topic_name, value_deserializer="json", timestamp_extractor=lambda value, headers, ts, ttype: value["ts"]
)
state = {"seen": 0, "start": 0.0}


def count_and_stop(value: dict[str, Any]) -> None:
    if state["seen"] == 0:
        state["start"] = time.monotonic()
    state["seen"] += 1
    if state["seen"] >= count:
        print(json.dumps({"seconds": time.monotonic() - state["start"], "readings": state["seen"]}))
        sys.stdout.flush()
        app.stop()


def reducer(agg: dict[str, Any], value: dict[str, Any]) -> dict[str, Any]:
    for name, number in value["metrics"].items():
        c, s, lo, hi = agg.get(name, (0, 0.0, number, number))
        agg[name] = (c + 1, s + number, min(lo, number), max(hi, number))
    return agg


sdf = app.dataframe(topic)
sdf = sdf.update(count_and_stop)
sdf = (
    sdf.tumbling_window(timedelta(minutes=1), grace_ms=10_000)
    .reduce(reducer=reducer, initializer=lambda value: reducer({}, value))
    .final()
)
app.run()
