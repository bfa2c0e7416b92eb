"""`ringcast drill`: failover drills under verified load, with a PASS/FAIL verdict and reports.

cli (the command; also `python -m chaos.drill`), scenarios (one class per fault;
control_pause and partition in their own modules), cluster (the processes a drill
runs), fleet (the same on three hosts made of network namespaces, chaos/netns.py),
population (the verifying clients and publishers), client (one such client,
driving router.client_core), stalled_reader, measure (results and verdict), report
(JSON, Markdown, PNG).
"""
