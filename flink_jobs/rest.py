"""The bits of Flink's REST API the submitter and the runner need."""

from __future__ import annotations

from typing import Any

import httpx


class FlinkRest:
    def __init__(self, base_url: str, timeout_s: float = 5.0) -> None:
        self._client = httpx.Client(base_url=base_url, timeout=timeout_s)

    def close(self) -> None:
        self._client.close()

    def _get(self, path: str, params: dict[str, str] | None = None) -> Any:
        response = self._client.get(path, params=params)
        response.raise_for_status()
        return response.json()

    def jobs(self) -> list[dict[str, Any]]:
        jobs: list[dict[str, Any]] = self._get("/jobs/overview")["jobs"]
        return jobs

    def active_job(self, name: str) -> dict[str, Any] | None:
        """The job of that name that is not in a terminal state, if any."""
        terminal = {"FINISHED", "CANCELED", "FAILED"}
        for job in self.jobs():
            if job["name"] == name and job["state"] not in terminal:
                return job
        return None

    def latest_checkpoint(self, job_id: str) -> dict[str, Any] | None:
        latest: dict[str, Any] | None = self._get(f"/jobs/{job_id}/checkpoints").get("latest", {}).get(
            "completed"
        )
        return latest

    def job(self, job_id: str) -> dict[str, Any]:
        job: dict[str, Any] = self._get(f"/jobs/{job_id}")
        return job

    def checkpoint_details(self, job_id: str, checkpoint_id: int) -> dict[str, Any]:
        details: dict[str, Any] = self._get(f"/jobs/{job_id}/checkpoints/details/{checkpoint_id}")
        return details

    def duplicates_removed(self, job_id: str) -> int | None:
        """Copies the job's deduplication dropped since the job (re)started: what its operators
        took in minus what they passed on. None if the job has no deduplication (or no figures
        yet). Flink's counters start from zero when the job restarts."""
        removed: int | None = None
        for vertex in self._get(f"/jobs/{job_id}")["vertices"]:
            names = [part.strip() for part in vertex["name"].split("->")]
            operators = [n for n in names if n.startswith("Deduplicate[")]
            if not operators:
                continue
            wanted = [f"{op}.{m}" for op in operators for m in ("numRecordsIn", "numRecordsOut")]
            figures = self._get(
                f"/jobs/{job_id}/vertices/{vertex['id']}/subtasks/metrics",
                params={"get": ",".join(wanted), "agg": "sum"},
            )
            sums = {m["id"]: float(m["sum"]) for m in figures if "sum" in m}
            for op in operators:
                got_in, got_out = sums.get(f"{op}.numRecordsIn"), sums.get(f"{op}.numRecordsOut")
                if got_in is not None and got_out is not None:
                    removed = (removed or 0) + int(got_in - got_out)
        return removed

    def vertex_counts(self, job_id: str, metrics: tuple[str, ...]) -> dict[str, dict[str, float]]:
        """{vertex name: {metric: sum over its subtasks}}; counts are at most
        `metrics.fetcher.update-interval` old. A vertex without figures yet has an empty dict."""
        counts: dict[str, dict[str, float]] = {}
        for vertex in self._get(f"/jobs/{job_id}")["vertices"]:
            figures = self._get(
                f"/jobs/{job_id}/vertices/{vertex['id']}/subtasks/metrics",
                params={"get": ",".join(metrics), "agg": "sum"},
            )
            counts[vertex["name"]] = {m["id"]: float(m["sum"]) for m in figures if "sum" in m}
        return counts

    def taskmanager_metrics(self, metrics: tuple[str, ...]) -> dict[str, float]:
        """{metric: sum over every task manager} (e.g. Status.JVM.Memory.Heap.Max)."""
        sums: dict[str, float] = dict.fromkeys(metrics, 0.0)
        for manager in self._get("/taskmanagers")["taskmanagers"]:
            figures = self._get(f"/taskmanagers/{manager['id']}/metrics",
                                params={"get": ",".join(metrics)})
            for figure in figures:
                sums[figure["id"]] += float(figure["value"])
        return sums

    def source_offsets(self, job_id: str, topic: str) -> dict[int, int]:
        """{partition of `topic`: the offset the job's source has read to} by the connector's own
        `currentOffset` (highest over subtasks: a partition moves between them on a rescale):
        where the job is, not where its last checkpoint committed it. Flink's `pendingRecords`
        is not used: it read 0 while the source was thousands of records behind. A partition
        the source has not reported yet is absent."""
        prefix = f"KafkaSourceReader.topic.{topic.replace('.', '_')}.partition."
        offsets: dict[int, int] = {}
        for vertex in self._get(f"/jobs/{job_id}")["vertices"]:
            if not vertex["name"].startswith("Source"):
                continue
            path = f"/jobs/{job_id}/vertices/{vertex['id']}/subtasks/metrics"
            wanted = [m["id"] for m in self._get(path)
                      if prefix in m["id"] and m["id"].endswith(".currentOffset")]
            if not wanted:
                continue
            for figure in self._get(path, params={"get": ",".join(wanted), "agg": "max"}):
                if "max" in figure and float(figure["max"]) >= 0:
                    partition = int(figure["id"].split(prefix, 1)[1].split(".", 1)[0])
                    offsets[partition] = max(offsets.get(partition, 0), int(float(figure["max"])))
        return offsets

    def taskmanager_process_memory(self) -> list[int]:
        """Each task manager's whole process memory in bytes (taskmanager.memory.process.size)."""
        return [int(manager.get("memoryConfiguration", {}).get("totalProcessMemory", 0))
                for manager in self._get("/taskmanagers")["taskmanagers"]]

    def cancel(self, job_id: str) -> None:
        self._client.patch(f"/jobs/{job_id}", params={"mode": "cancel"}).raise_for_status()
