"""The load generator's parts: wire (a lean raw WebSocket client that verifies what
arrives), worker (one load process: ramp, publish, settle), stats (tallies and
latency histograms), report (JSON and Markdown). `ringcast bench` drives them.
"""
