"""The aggregation as Flink SQL: pure functions from settings to statements, unit-testable.

Flow: readings (Kafka, JSON) -> one row per (reading, metric) with a `late` flag -> on-time rows into
1-minute tumbling windows -> 1-hour windows cascaded from the 1-minute results -> all rows, late ones
included, into the all-time rollup. All of it runs in the JVM; Python only builds and submits it.

The shared steps are views registered as Table objects (job.register_views), not CREATE VIEW: a SQL
view is expanded anew in every statement that reads it, each expansion of the UNNEST gets its own
correlation variable, and the planner, seeing different sub-plans, would unnest and window every
reading once per branch. One Table is one sub-plan, which the statement set computes once.

"Late" means: the reading's 1-minute window had already been finalised by the watermark when the
reading arrived. Such readings are kept out of the 1m and 1h windows explicitly (so no window ever
mixes them in) and are counted in the all-time rollup and its `late` column.

Duplicates (the same reading delivered to Kafka again: same deviceId, ts, seq and metrics) are
removed before anything else, so a copy counts in no window and not in all-time, late or not. The
deduplication keeps the first copy by arrival (processing time), so its output is append-only and
keeps the event-time attribute for the windows; its state's time-to-live, the redelivery horizon,
is set on that one operator (job.compiled_plan), never on the all-time rollup, which must not
forget. Records without a deviceId (the bridge's watermark heartbeats) only move the watermark.
"""

from __future__ import annotations

from flink_jobs.config import FlinkJobSettings

# The Kafka connector jar shades the Kafka client: its login modules live under this prefix.
_SHADED_KAFKA = "org.apache.flink.kafka.shaded.org.apache.kafka"
_LOGIN_MODULES = {
    "PLAIN": f"{_SHADED_KAFKA}.common.security.plain.PlainLoginModule",
    "SCRAM-SHA-256": f"{_SHADED_KAFKA}.common.security.scram.ScramLoginModule",
    "SCRAM-SHA-512": f"{_SHADED_KAFKA}.common.security.scram.ScramLoginModule",
}


def kafka_security(settings: FlinkJobSettings) -> str:
    """The connector's client options for a secured Kafka (the same IOT_KAFKA_* settings as every
    other client's); nothing on the plaintext local stack, so its statements stay as they were."""
    if settings.kafka_security_protocol == "PLAINTEXT":
        return ""
    options: dict[str, str] = {"properties.security.protocol": settings.kafka_security_protocol}
    if settings.kafka_sasl_mechanism is not None:
        password = settings.kafka_sasl_password.get_secret_value() if settings.kafka_sasl_password else ""
        options["properties.sasl.mechanism"] = settings.kafka_sasl_mechanism
        options["properties.sasl.jaas.config"] = (
            f"{_LOGIN_MODULES[settings.kafka_sasl_mechanism]} required "
            f'username="{settings.kafka_sasl_username or ""}" password="{password}";'
        )
    if settings.kafka_ssl_ca_file is not None:
        options["properties.ssl.truststore.type"] = "PEM"
        options["properties.ssl.truststore.location"] = str(settings.kafka_ssl_ca_file)
    # SQL string literals: a quote inside a value is doubled.
    quoted = {key: value.replace("'", "''") for key, value in options.items()}
    return "".join(f"\n    '{key}' = '{value}'," for key, value in quoted.items())


def source_ddl(settings: FlinkJobSettings, table: str = "readings") -> str:
    return f"""
CREATE TABLE {table} (
    -- Only what the aggregation reads: the JSON parser skips the other fields (tenant, the
    -- heartbeat marker) without building values for them.
    deviceId STRING,
    ts BIGINT,
    seq BIGINT,
    metrics MAP<STRING, DOUBLE>,
    -- Aggregate keys of the device's groups, as the bridge knew them on receipt.
    `groups` ARRAY<STRING>,
    receivedAt BIGINT,
    event_time AS TO_TIMESTAMP_LTZ(ts, 3),
    received_time AS TO_TIMESTAMP_LTZ(COALESCE(receivedAt, ts), 3),
    arrival AS PROCTIME(),
    -- Bounded by the bridge's clock too: a device whose clock runs minutes ahead (the contract
    -- accepts up to 5) must not push the watermark past everyone else's readings.
    WATERMARK FOR event_time AS LEAST(event_time, received_time)
        - INTERVAL '{settings.watermark_delay_s}' SECOND
) WITH (
    'connector' = 'kafka',
    'topic' = '{settings.source_topic}',
    'properties.bootstrap.servers' = '{settings.kafka_bootstrap}',{kafka_security(settings)}
    'properties.group.id' = '{settings.consumer_group}',
    'properties.auto.offset.reset' = 'earliest',
    -- Only a start without state reads this: it rebuilds the aggregates from the oldest retained
    -- reading (a restore takes its offsets from the checkpoint, whatever this says).
    'scan.startup.mode' = 'earliest-offset',
    'format' = 'json',
    'json.fail-on-missing-field' = 'false',
    'json.ignore-parse-errors' = 'true'
)"""


# The statistics every aggregate row has, by device (or group key) and metric.
_STATS_COLUMNS = """
    `count` BIGINT,
    `sum` DOUBLE,
    `min` DOUBLE,
    `max` DOUBLE"""


def _sink_ddl(
    name: str, options: dict[str, str], settings: FlinkJobSettings, *, before: str = "", after: str = ""
) -> str:
    """A Kafka sink of JSON aggregate rows: columns `before` and `after` the statistics (the
    INSERTs fill them by position), `options` beside the topic's connection."""
    with_options = "".join(f"\n    '{key}' = '{value}'," for key, value in options.items())
    return f"""
CREATE TABLE {name} (
    deviceId STRING,
    metric STRING,{before}{_STATS_COLUMNS}{after}
) WITH (
    'properties.bootstrap.servers' = '{settings.kafka_bootstrap}',{kafka_security(settings)}{with_options}
    'value.format' = 'json',
    'value.fields-include' = 'ALL'
)"""


_WINDOW_COLUMNS = """
    windowStart BIGINT,
    windowEnd BIGINT,"""
_ALL_TIME_COLUMNS = """,
    firstTs BIGINT,
    lastTs BIGINT,
    late BIGINT,
    PRIMARY KEY (deviceId, metric) NOT ENFORCED"""


def sink_ddls(settings: FlinkJobSettings) -> list[str]:
    def window_options(topic: str) -> dict[str, str]:
        return {
            "connector": "kafka",
            "topic": topic,
            "key.format": "raw",
            "key.fields": "deviceId",
            "sink.delivery-guarantee": "at-least-once",
        }

    all_time_options = {
        "connector": "upsert-kafka",
        "topic": settings.sink_topic_all,
        "key.format": "json",
        # One upsert per key per interval reaches Kafka, however many readings updated it.
        "sink.buffer-flush.max-rows": "10000",
        "sink.buffer-flush.interval": f"{settings.rollup_flush_ms} ms",
    }
    return [
        _sink_ddl("agg_1m_sink", window_options(settings.sink_topic_1m), settings, before=_WINDOW_COLUMNS),
        _sink_ddl("agg_1h_sink", window_options(settings.sink_topic_1h), settings, before=_WINDOW_COLUMNS),
        _sink_ddl("agg_all_sink", all_time_options, settings, after=_ALL_TIME_COLUMNS),
    ]


# The metrics' part of a reading's identity in the deduplication key: 7 bytes (56 bits) of the
# MD5 of their text. deviceId, ts and seq already tell every reading from every other; the metrics
# only have to tell apart two readings that share all three (a device reusing a seq and a ts for
# other values), and for two such readings to be taken for copies their hashes would have to
# collide in 56 bits (a chance of 1 in 7e16 per pair). Flink's SQL has no 64-bit hash function and
# cannot cast bytes to BIGINT; 7 bytes, not 8, because the key is a binary row, which stores a
# variable-length field of up to 7 bytes in the field's own 8-byte slot: the hash then adds no
# byte to the key beyond that slot (the whole MD5 as 32 hexadecimal characters added 32).
DEDUP_METRICS_KEY = "UNHEX(LEFT(MD5(CAST(metrics AS STRING)), 14))"


def views(source: str = "readings", dedup: bool = True, groups: bool = True) -> list[tuple[str, str]]:
    """(name, query) of the views the three aggregations share, in dependency order; `source` is
    any table with the readings schema. job.register_views registers them as Table objects.

    With `groups`, every distinct reading is counted once under its device's id and once more
    under each of its groups' aggregate keys (gateway/groups.py): downstream, a group is one more
    key of the same windows, so its 1m, 1h and all-time rows, and its late count, follow the
    devices' rules exactly."""
    readings = f"""
SELECT deviceId, ts, metrics, `groups`, event_time FROM {source}
WHERE deviceId IS NOT NULL AND ts IS NOT NULL"""
    if dedup:
        # Keep the first copy of each reading. A MAP cannot be hashed as a key; its text can, and
        # the copies of one reading carry the same metrics in the same order (the bridge encodes
        # the same payload again). The key holds a short hash of the text (DEDUP_METRICS_KEY),
        # not the text (about 90 characters for three metrics): every key is kept for the
        # horizon, on the heap, in every checkpoint and in the shuffle. What bounds this state is
        # the operator's TTL.
        readings = f"""
SELECT deviceId, ts, metrics, `groups`, event_time FROM (
    SELECT deviceId, ts, metrics, `groups`, event_time, ROW_NUMBER() OVER (
        PARTITION BY deviceId, ts, seq, {DEDUP_METRICS_KEY} ORDER BY arrival ASC) AS copy_no
    FROM {source}
    WHERE deviceId IS NOT NULL AND ts IS NOT NULL
) WHERE copy_no = 1"""
    # One UNNEST over the device's own key and its groups' keys, not a UNION of two branches: the
    # deduplication then has one consumer, so its record counts stay the copies it removed.
    keyed = """
SELECT k.agg_key AS deviceId, r.ts, r.metrics, r.event_time
FROM distinct_readings AS r
CROSS JOIN UNNEST(
    CASE WHEN r.`groups` IS NULL THEN ARRAY[r.deviceId] ELSE ARRAY_CONCAT(ARRAY[r.deviceId], r.`groups`) END
) AS k (agg_key)"""
    classified = f"""
SELECT
    r.deviceId,
    r.ts,
    r.event_time,
    m.metric,
    m.val,
    COALESCE(
        TO_TIMESTAMP_LTZ(r.ts - MOD(r.ts, 60000) + 59999, 3) <= CURRENT_WATERMARK(r.event_time),
        FALSE
    ) AS late
FROM {"keyed" if groups else "distinct_readings"} AS r
CROSS JOIN UNNEST(r.metrics) AS m (metric, val)
WHERE m.val IS NOT NULL"""
    on_time = """
SELECT deviceId, metric, val, ts, event_time FROM classified WHERE NOT late"""
    windows_1m = """
SELECT
    deviceId, metric, window_time,
    -- Window bounds leave Flink as epoch ms, derived from the data: no time-zone ambiguity.
    MIN(ts - MOD(ts, 60000)) AS start_ms,
    COUNT(*) AS cnt, SUM(val) AS total, MIN(val) AS lo, MAX(val) AS hi,
    MIN(ts) AS first_ts, MAX(ts) AS last_ts
FROM TABLE(TUMBLE(TABLE on_time, DESCRIPTOR(event_time), INTERVAL '1' MINUTE))
GROUP BY deviceId, metric, window_start, window_end, window_time"""
    shared = [("distinct_readings", readings), *([("keyed", keyed)] if groups else []),
              ("classified", classified), ("on_time", on_time), ("windows_1m", windows_1m)]
    return shared


INSERT_1M = """
INSERT INTO agg_1m_sink
SELECT deviceId, metric, start_ms, start_ms + 60000, cnt, total, lo, hi
FROM windows_1m"""

INSERT_1H = """
INSERT INTO agg_1h_sink
SELECT deviceId, metric,
       MIN(start_ms - MOD(start_ms, 3600000)), MIN(start_ms - MOD(start_ms, 3600000)) + 3600000,
       SUM(cnt), SUM(total), MIN(lo), MAX(hi)
FROM TABLE(TUMBLE(TABLE windows_1m, DESCRIPTOR(window_time), INTERVAL '1' HOUR))
GROUP BY deviceId, metric, window_start, window_end"""

# Per reading, not rolled up from the 1-minute windows: that would be cheaper, but the all-time
# row would then wait for its minute to close, and a fleet that goes quiet never closes its last
# minute (the watermark only moves with new readings).
INSERT_ALL = """
INSERT INTO agg_all_sink
SELECT deviceId, metric, COUNT(*), SUM(val), MIN(val), MAX(val), MIN(ts), MAX(ts),
       SUM(CASE WHEN late THEN 1 ELSE 0 END)
FROM classified
GROUP BY deviceId, metric"""

# Rolled up from the closed 1-minute windows plus the late readings one by one: on-time readings
# reach the all-time state once per window instead of once each (on RocksDB, one state access
# per device, metric and minute instead of per reading). The all-time row then moves as minutes
# close; a fleet that goes quiet still closes its last minute by the bridge's heartbeats.
INSERT_ALL_FROM_WINDOWS = """
INSERT INTO agg_all_sink
SELECT deviceId, metric, SUM(cnt), SUM(total), MIN(lo), MAX(hi), MIN(first_ts), MAX(last_ts),
       SUM(late_cnt)
FROM (
    SELECT deviceId, metric, cnt, total, lo, hi, first_ts, last_ts, CAST(0 AS BIGINT) AS late_cnt
    FROM windows_1m
    UNION ALL
    SELECT deviceId, metric, CAST(1 AS BIGINT), val, val, val, ts, ts, CAST(1 AS BIGINT)
    FROM classified WHERE late
)
GROUP BY deviceId, metric"""


def inserts(settings: FlinkJobSettings) -> list[str]:
    if settings.all_time_from == "windows":
        return [INSERT_1M, INSERT_1H, INSERT_ALL_FROM_WINDOWS]
    return [INSERT_1M, INSERT_1H, INSERT_ALL]
