"""`ringcast drill`: failover drills under verified load, with a PASS/FAIL verdict and reports.

cli (the command), scenarios (one class per fault), cluster (the processes a drill
runs), population (the verifying clients and publishers), client (one such client,
driving router.client_core), stalled_reader, measure (results and verdict), report
(JSON, Markdown, PNG).
"""
