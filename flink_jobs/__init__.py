"""flink_jobs"""
