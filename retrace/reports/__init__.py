"""Coreless crash reports: ABRT's uReport format, symbolication of their frames, and crash buckets."""
