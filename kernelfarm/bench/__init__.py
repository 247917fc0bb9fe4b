"""Benchmark machinery: latency histogram, load generator, workloads, echo floor, CPU meter.

Kept apart from the daemon so that nothing here is imported on a kernel's path; the
load generator must cost less per request than the server it measures, so its hot loop
is written with the same care as the kernel's.
"""
